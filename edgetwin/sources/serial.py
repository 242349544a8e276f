"""Firmware bridges over USB serial: DIY fNIRS / PPG / EDA rigs speaking ``PROTOCOL.md``.

``SerialSource`` opens a port or URL (``/dev/ttyACM0``, a pty path,
``socket://host:port``) with pyserial in a worker thread, asks the device to
describe itself, then maps SAMPLES frames to ``SampleBatch`` (physical units,
host timestamps), marking sequence gaps with NaN rows and recovering from
garbage. When the port vanishes the stream raises ``TransientSourceError``;
the supervisor calls ``connect()`` again after its backoff.

Device time becomes host time through ``ClockEstimator`` (offset and drift
from the lower envelope of ``host_rx - device_t``). ``scan_ports`` lists USB
serial ports and which of them answer a DESCRIBE.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import edgetwin.clock as twin_clock
from edgetwin.errors import (
    DeviceNotFound,
    MalformedInput,
    PairingRefused,
    SourceError,
    TransientSourceError,
)
from edgetwin.sources import bridge_protocol as bp
from edgetwin.sources.base import Source
from edgetwin.types import SampleBatch, channel_kind

_LOGGER = logging.getLogger(__name__)

DEFAULT_BAUD = 115200
_READ_TIMEOUT_S = 0.05
# After the first byte of a burst, let this long's worth of frames gather before reading
# them: at 100 frames/s a wake per frame (two selects, two reads and a GIL hand-over)
# cost more CPU than decoding the frames. 40 ms is 4.6 KB even at 1 Mbaud, well inside
# the kernel's tty buffering; a read that already brought 1 KiB skips the wait.
_COALESCE_S = 0.04
_COALESCE_SKIP_BYTES = 1024
_DESCRIBE_RETRY_S = 0.5
_START_RETRY_S = 1.0
_BACK_POLL_S = 0.25  # how often a vanished port's path is looked for
_BACK_SETTLE_S = 0.2  # udev sets a new node's group and mode just after it appears
_SEQ_MOD = 1 << 32


# -- device clock ------------------------------------------------------------


class ClockEstimator:
    """Maps device microseconds to host epoch seconds: ``host = dev + offset + drift * dev``.

    Every observation ``host_rx - device_t`` is the true offset plus a
    non-negative transport latency, so the smallest values are the most
    truthful. Observations are binned into ``window_s`` windows of device time;
    the minimum of each of the last ``windows`` bins feeds a least-squares line
    whose slope is the drift (device crystal error, typically 10-100 ppm) and
    whose intercept is the offset. With fewer than 3 windows the drift is 0
    and the offset is the running minimum.
    """

    def __init__(self, window_s: float = 2.0, windows: int = 60) -> None:
        self.window_s = window_s
        self._minima: deque[tuple[float, float]] = deque(maxlen=windows)
        self._bin: int | None = None
        self._bin_min: tuple[float, float] | None = None
        self._offset = 0.0
        self._drift = 0.0
        self._anchor = 0.0
        self.ready = False

    def reset(self) -> None:
        """Forget everything (device rebooted or a new connection)."""
        self._minima.clear()
        self._bin = None
        self._bin_min = None
        self._drift = 0.0
        self.ready = False

    @property
    def drift_ppm(self) -> float:
        return self._drift * 1e6

    @property
    def offset_s(self) -> float:
        """Host minus device time at the current anchor (device time of the latest fit)."""
        return self._offset + self._drift * self._anchor

    def observe(self, device_s: float, host_s: float) -> None:
        """Record that something stamped ``device_s`` on the device arrived at ``host_s``."""
        d = host_s - device_s
        k = math.floor(device_s / self.window_s)
        if self._bin is None or k != self._bin:
            closed = self._bin_min
            self._bin = k
            self._bin_min = (device_s, d)
            if closed is not None:
                self._minima.append(closed)
            self._fit()
        elif d < self._bin_min[1]:  # type: ignore[index]
            self._bin_min = (device_s, d)
            if len(self._minima) < 2:
                self._fit()  # cheap while there is no line yet; later, refit per window

    def shift(self, delta_s: float) -> None:
        """The host's clock jumped by ``delta_s``: move the line and its minima with it."""
        self._minima = deque(((x, y + delta_s) for x, y in self._minima), self._minima.maxlen)
        if self._bin_min is not None:
            self._bin_min = (self._bin_min[0], self._bin_min[1] + delta_s)
        self._offset += delta_s

    @property
    def settled(self) -> bool:
        """A line through at least two closed windows' minima, not the first arrivals."""
        return len(self._minima) >= 2

    def to_host(self, device_s: float | npt.NDArray[np.float64]) -> Any:
        """Host epoch seconds of device time(s) ``device_s``."""
        return device_s + self._offset + self._drift * (device_s - self._anchor)

    def _fit(self) -> None:
        points = list(self._minima)
        if len(points) < 2 and self._bin_min is not None:
            points.append(self._bin_min)  # no line yet: the open window's minimum helps
        self.ready = True
        if len(points) < 3:
            best = min(points, key=lambda p: p[1])
            self._anchor = best[0]
            self._offset = best[1]
            self._drift = 0.0
            return
        xs = np.fromiter((p[0] for p in points), dtype=np.float64, count=len(points))
        ys = np.fromiter((p[1] for p in points), dtype=np.float64, count=len(points))
        x0 = float(xs.mean())
        dx = xs - x0
        denom = float(dx @ dx)
        slope = float(dx @ (ys - ys.mean()) / denom) if denom > 0 else 0.0
        # The line through the mean may sit above some minima; lower it onto the envelope.
        resid = ys - (ys.mean() + slope * dx)
        self._anchor = x0
        self._offset = float(ys.mean() + resid.min())
        self._drift = slope


# -- frames to batches -------------------------------------------------------


class _NotARun(Exception):
    """Frames that do not simply continue each other: map them one by one."""


@dataclass
class _Pending:
    t: list[npt.NDArray[np.float64]]
    values: list[npt.NDArray[np.float64]]
    gaps: list[list[float]]
    rows: int = 0
    since: float = 0.0


class BridgeMapper:
    """Turns SAMPLES frames of one descriptor into host-timed, physical-unit rows.

    Pure (no I/O): the source feeds it frames and the host time they arrived.
    A forward jump of the sequence number is a gap: it counts once in
    ``gaps``, its rows in ``lost_samples``, and up to ``max_fill_s`` of it
    becomes NaN rows so downstream resampling sees the hole.
    """

    def __init__(
        self,
        stream: str,
        descriptor: bp.Descriptor,
        clock: ClockEstimator,
        *,
        max_fill_s: float = 5.0,
    ) -> None:
        self.stream = stream
        self.descriptor = descriptor
        self.clock = clock
        self.channels = descriptor.names
        self.units = descriptor.units
        self.period_s = 1.0 / descriptor.rate_hz
        self.max_fill_rows = max(0, int(max_fill_s * descriptor.rate_hz))
        self.meta = descriptor_meta(descriptor)
        self.scale = np.array([c.scale for c in descriptor.channels], dtype=np.float64)
        self.offset = np.array([c.offset for c in descriptor.channels], dtype=np.float64)
        self._gather, self._sign_mask = _int_layout(descriptor)
        self._signed = bool(self._sign_mask.any())
        self._row_bytes = descriptor.row_bytes  # a property summing the channels: once
        self._next_seq: int | None = None
        self._last_dev_s: float | None = None
        self._last_t = -math.inf
        self.gaps = 0
        self.lost_samples = 0
        self.restarts = 0
        self.recent_gaps: deque[tuple[float, float]] = deque(maxlen=32)

    def decode_values(self, frame: bp.SamplesFrame) -> npt.NDArray[np.float64]:
        """Physical values of a frame's rows; ``BadFrame('length')`` if the payload is off."""
        if len(frame.data) != frame.n_rows * self._row_bytes:
            bp.check_samples_length(self.descriptor, frame)  # raises, saying what is off
        return self._decode(frame.data, frame.n_rows)

    def _decode(self, data: bytes, n_rows: int) -> npt.NDArray[np.float64]:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(n_rows, -1)
        # (rows, channels, 4) little-endian bytes, top byte repeated; fancy indexing may
        # hand back a non-C layout, and .view() needs contiguous lanes.
        g = np.ascontiguousarray(raw[:, self._gather])
        if self._signed:
            g[:, self._sign_mask] = (g[:, self._sign_mask] >> 7) * np.uint8(0xFF)
        ints = g.view("<i4").reshape(n_rows, len(self.channels))
        out: npt.NDArray[np.float64] = ints * self.scale + self.offset
        return out

    def on_run(
        self, frames: list[bp.SamplesFrame], host_rx: float
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[list[float]]]:
        """Rows of frames that arrived in one read, mapped in one numpy pass when they simply
        continue each other (the usual case: per frame, the numpy calls cost 6x the decode).
        Anything else (a gap, a restart, a bad length) raises ``_NotARun`` having changed
        nothing, and the caller maps those frames one by one with :meth:`on_samples`."""
        nxt, last_dev = self._next_seq, self._last_dev_s
        period, row_bytes = self.period_s, self._row_bytes
        ends: list[float] = []
        for f in frames:
            dev = f.t_us / 1e6
            if (
                (nxt is not None and f.seq != nxt)
                or (last_dev is not None and dev < last_dev)
                or len(f.data) != f.n_rows * row_bytes
                or not f.n_rows
            ):
                raise _NotARun
            nxt = (f.seq + f.n_rows) % _SEQ_MOD
            last_dev = dev + (f.n_rows - 1) * period
            ends.append(last_dev)
        self._next_seq, self._last_dev_s = nxt, last_dev
        for end in ends:  # each frame left the device after its last row was sampled
            self.clock.observe(end, host_rx)
        data = b"".join(f.data for f in frames)
        total = len(data) // row_bytes
        values = self._decode(data, total)
        starts = np.fromiter((f.t_us for f in frames), dtype=np.float64, count=len(frames))
        per = np.fromiter((f.n_rows for f in frames), dtype=np.int64, count=len(frames))
        offsets = np.arange(total, dtype=np.float64) - np.repeat(np.cumsum(per) - per, per)
        dev_t = np.repeat(starts / 1e6, per) + offsets * period
        t = np.asarray(self.clock.to_host(dev_t), dtype=np.float64)
        t = np.maximum.accumulate(np.maximum(t, self._last_t))
        self._last_t = float(t[-1])
        return t, values, []

    def on_samples(
        self, frame: bp.SamplesFrame, host_rx: float
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[list[float]]]:
        """Rows of one frame (plus NaN rows for a gap before it): ``(t, values, gaps)``."""
        values = self.decode_values(frame)
        dev_s = frame.t_us / 1e6
        fill = 0
        gaps: list[list[float]] = []
        if self._next_seq is not None:
            jump = (frame.seq - self._next_seq) % _SEQ_MOD
            restarted = jump >= _SEQ_MOD // 2 or (
                self._last_dev_s is not None and dev_s < self._last_dev_s
            )
            if restarted:
                # Device rebooted (or replayed old rows): its clock and count start over.
                self.restarts += 1
                self.clock.reset()
            elif jump:
                self.gaps += 1
                self.lost_samples += jump
                fill = min(jump, self.max_fill_rows)
        self._next_seq = (frame.seq + frame.n_rows) % _SEQ_MOD
        last_dev = dev_s + (frame.n_rows - 1) * self.period_s
        self._last_dev_s = last_dev
        # The frame left the device after its last row was sampled.
        self.clock.observe(last_dev, host_rx)
        k = np.arange(-fill, frame.n_rows, dtype=np.float64)
        t = np.asarray(self.clock.to_host(dev_s + k * self.period_s), dtype=np.float64)
        if fill:
            gap = [float(t[0]), float(t[fill - 1])]
            gaps.append(gap)
            self.recent_gaps.append((gap[0], gap[1]))
            nan_rows = np.full((fill, len(self.channels)), np.nan)
            values = np.vstack((nan_rows, values))
        # Keep time non-decreasing when the clock estimate steps back a little.
        t = np.maximum.accumulate(np.maximum(t, self._last_t))
        self._last_t = float(t[-1])
        return t, values, gaps


def descriptor_meta(descriptor: bp.Descriptor) -> dict[str, Any]:
    """JSON-serialisable per-stream facts: device, rate, and fNIRS wavelengths and distances."""
    dev = descriptor.device
    meta: dict[str, Any] = {
        "source": "serial",
        "model": dev.model,
        "firmware": "{}.{}.{}".format(*dev.firmware),
        "rate_hz": dev.rate_hz,
        # values are adc_int * scale + offset: lets the store keep the integers, exactly
        "adc_scale": [float(c.scale) for c in descriptor.channels],
        "adc_offset": [float(c.offset) for c in descriptor.channels],
    }
    optical = [c for c in descriptor.channels if c.wavelength_nm]
    if optical:
        meta["wavelength_nm"] = {c.name: c.wavelength_nm for c in optical}
        meta["distance_cm"] = {c.name: c.distance_cm for c in optical if c.distance_01mm}
    return meta


def stream_name(name: str, descriptor: bp.Descriptor) -> str:
    """``<name>.<kind>``: the one channel kind the device carries, else ``<name>.bridge``."""
    kinds = {channel_kind(c.name) for c in descriptor.channels}
    return f"{name}.{kinds.pop()}" if len(kinds) == 1 else f"{name}.bridge"


# -- the source --------------------------------------------------------------


class SerialSource(Source):
    """A firmware bridge on a serial port or pyserial URL."""

    kind = "serial"

    def __init__(
        self,
        name: str,
        port: str,
        baud: int = DEFAULT_BAUD,
        *,
        handshake_timeout_s: float = 3.0,
        batch_s: float = 0.1,
        queue_batches: int = 64,
        max_fill_s: float = 5.0,
        clock: Callable[[], float] = twin_clock.now,
        coalesce_s: float | None = None,
    ) -> None:
        super().__init__(name)
        self.port = port
        self.coalesce_s = min(_COALESCE_S, batch_s / 2) if coalesce_s is None else coalesce_s
        self.baud = baud
        self.handshake_timeout_s = handshake_timeout_s
        self.batch_s = batch_s
        self.queue_batches = queue_batches
        self.max_fill_s = max_fill_s
        self._clock = clock
        self.descriptor: bp.Descriptor | None = None
        self.clock_estimator = ClockEstimator()
        self.decoder = bp.StreamDecoder()
        self._serial: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: asyncio.Queue[SampleBatch | BaseException] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mapper: BridgeMapper | None = None
        self._token = 0
        self._extra_bad = 0  # bad frames the decoder passed but the descriptor rejects
        # drops come from two threads; each owns one count and counters.drops is their sum
        self._worker_drops = 0
        self._queue_drops = 0
        self._previous: BridgeMapper | None = None
        self._lost_before = 0
        self._gaps_before = 0

    @classmethod
    def from_record(cls, name: str, record: dict[str, Any]) -> SerialSource:
        """Build from a pairing record ``{"kind": "serial", "port": ..., "baud": 115200}``."""
        if record.get("kind") != "serial":
            raise MalformedInput(
                f"pairing {name!r}: kind is {record.get('kind')!r}, not 'serial'",
                hint="re-pair it with 'edgetwin pair add serial PORT'",
            )
        port = record.get("port")
        if not isinstance(port, str) or not port:
            raise MalformedInput(
                f"pairing {name!r}: 'port' must be a non-empty string, got {port!r}",
                hint="re-pair it with 'edgetwin pair add serial PORT'",
            )
        baud = record.get("baud", DEFAULT_BAUD)
        if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
            raise MalformedInput(
                f"pairing {name!r}: 'baud' must be a positive integer, got {baud!r}",
                hint="re-pair it with --baud N",
            )
        return cls(name, port, baud)

    async def connect(self) -> None:
        """Open the port, handshake the descriptor and start streaming; clean up on failure."""
        await self.close()
        self._stop.clear()
        self.decoder.reset(mid_stream=True)
        self.clock_estimator.reset()
        # The same device after a reconnect keeps its sequence state, so the outage counts as a gap.
        if self._mapper is not None:
            self._previous = self._mapper
            self._mapper = None
        ser = await asyncio.to_thread(_open_port, self.port, self.baud)
        self._serial = ser
        try:
            descriptor, leftovers = await asyncio.to_thread(self._handshake)
        except BaseException:
            await asyncio.to_thread(_close_port, ser)
            self._serial = None
            raise
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=self.queue_batches)
        self._install(descriptor)
        self._thread = threading.Thread(
            target=self._reader, args=(leftovers,), name=f"serial-{self.name}", daemon=True
        )
        self._thread.start()
        _LOGGER.info(
            "serial %s: %s fw %s, %d channels at %g Hz",
            self.name,
            descriptor.device.model or descriptor.device.device_id,
            "{}.{}.{}".format(*descriptor.device.firmware),
            len(descriptor.channels),
            descriptor.rate_hz,
        )

    async def stream(self) -> AsyncIterator[SampleBatch]:
        """Batches until the link drops (``TransientSourceError``) or ``close``."""
        queue = self._queue
        if queue is None:
            raise TransientSourceError(f"serial {self.name}: not connected", hint="call connect()")
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            self.counters.count(item)
            yield item

    async def until_back(self) -> None:
        """A port path that vanished (the cable pulled: udev removed the node or its by-id
        link) and exists again: the device is back. ``socket://`` and other URLs have no
        path to watch; nor is a port that never vanished reconnected early (the backoff
        paces a device that is there but failing)."""
        if "://" in self.port:
            await super().until_back()
        path, gone = Path(self.port), False
        while True:
            # a stat; in a thread since a wedged USB stack can stall even that
            if not await asyncio.to_thread(path.exists):
                gone = True
            elif gone:
                await asyncio.sleep(_BACK_SETTLE_S)
                return
            await asyncio.sleep(_BACK_POLL_S)

    async def close(self) -> None:
        """Stop the worker, tell the device to stop, close the port; idempotent."""
        self._stop.set()
        ser = self._serial
        thread = self._thread
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.cancel_read()
        if thread is not None:
            await asyncio.to_thread(thread.join, 2.0)
            self._thread = None
        if ser is not None:
            self._serial = None
            await asyncio.to_thread(_stop_and_close, ser, self._next_token())
        self._queue = None

    def describe(self) -> dict[str, Any]:
        """Device facts and link health for ``status``."""
        out: dict[str, Any] = {
            "bad_packets_by_reason": dict(self.decoder.stats.bad_by_reason),
            "lost_samples": self.counters.extra.get("lost_samples", 0),
        }
        if self.descriptor is not None:
            out["model"] = self.descriptor.device.model
            out["firmware"] = "{}.{}.{}".format(*self.descriptor.device.firmware)
            out["rate_hz"] = self.descriptor.rate_hz
            out["channels"] = len(self.descriptor.channels)
        if self.clock_estimator.ready:
            out["clock_offset_s"] = round(self.clock_estimator.offset_s, 6)
            out["clock_drift_ppm"] = round(self.clock_estimator.drift_ppm, 2)
        return out

    async def set_rate(self, rate_hz: float) -> None:
        """Ask the device for a new sample rate; its new descriptor follows in the stream."""
        ser = self._serial
        if ser is None:
            raise TransientSourceError(f"serial {self.name}: not connected")
        frame = bp.encode_command(
            bp.FrameType.CMD_SET_RATE, self._next_token(), round(rate_hz * 1000)
        )
        await asyncio.to_thread(_write, ser, frame)

    # -- private -------------------------------------------------------------

    def _next_token(self) -> int:
        self._token = (self._token + 1) & 0xFF
        return self._token

    def _sync_counters(self) -> None:
        self.counters.bad_packets = self.decoder.stats.bad_frames + self._extra_bad
        self.counters.drops = self._worker_drops + self._queue_drops

    def _install(self, descriptor: bp.Descriptor) -> None:
        """Adopt a descriptor; an unchanged one keeps its mapper (sequence and clock state)."""
        old = self._mapper or self._previous
        self._previous = None
        if old is not None and old.descriptor == descriptor:
            self._mapper = old
            return
        if old is not None:
            self._lost_before += old.lost_samples
            self._gaps_before += old.gaps
        self.descriptor = descriptor
        self.clock_estimator.reset()
        self._mapper = BridgeMapper(
            stream_name(self.name, descriptor),
            descriptor,
            self.clock_estimator,
            max_fill_s=self.max_fill_s,
        )

    def _handshake(self) -> tuple[bp.Descriptor, list[tuple[bp.Frame, float]]]:
        """Worker-thread: DESCRIBE until a full descriptor arrives, then START."""
        ser = self._serial
        assembler = bp.DescriptorAssembler()
        deadline = time.monotonic() + self.handshake_timeout_s
        next_ask = 0.0
        dropped = 0
        while time.monotonic() < deadline and not self._stop.is_set():
            now = time.monotonic()
            if now >= next_ask:
                _write(ser, bp.encode_command(bp.FrameType.CMD_DESCRIBE, self._next_token()))
                next_ask = now + _DESCRIBE_RETRY_S
            data = _read(ser, self.port)
            if not data:
                continue
            frames = self.decoder.feed(data)
            for i, frame in enumerate(frames):
                if isinstance(frame, (bp.DeviceFrame, bp.ChannelFrame)):
                    try:
                        descriptor = assembler.feed(frame)
                    except bp.BadFrame:
                        self._extra_bad += 1
                        continue
                    if descriptor is not None:
                        self._worker_drops += dropped
                        self._sync_counters()
                        _write(ser, bp.encode_command(bp.FrameType.CMD_START, self._next_token()))
                        host = self._clock()
                        return descriptor, [(f, host) for f in frames[i + 1 :]]
                elif isinstance(frame, bp.SamplesFrame):
                    dropped += frame.n_rows  # rows before we know what they mean
            self._sync_counters()
        self._worker_drops += dropped
        self._sync_counters()
        raise DeviceNotFound(
            f"serial {self.name}: no bridge descriptor from {self.port} "
            f"within {self.handshake_timeout_s:g} s",
            hint="is the firmware flashed and the baud rate right? "
            "a device that is still booting is retried",
        )

    def _reader(self, leftovers: list[tuple[bp.Frame, float]]) -> None:
        """Worker thread: read, decode, map, batch; hand batches and the final error to the loop."""
        ser = self._serial
        pending = _Pending([], [], [])
        assembler = bp.DescriptorAssembler()
        last_samples = time.monotonic()
        last_start = last_samples
        last_describe = 0.0
        seen_jumped = twin_clock.CLOCK.jumped_forward_s()
        try:
            for frame, host in leftovers:
                self._on_frame(frame, host, assembler, pending)
            while not self._stop.is_set():
                data = _read(ser, self.port)
                # Not before the clock estimate has a line: it would map the first
                # reads' frames, which then all carry one arrival time, onto one instant.
                if (
                    0 < len(data) < _COALESCE_SKIP_BYTES
                    and self.coalesce_s > 0
                    and self.clock_estimator.settled
                ):
                    if self._stop.wait(self.coalesce_s):
                        break
                    data += _read_waiting(ser, self.port)
                host = self._clock()
                jumped = twin_clock.CLOCK.jumped_forward_s()
                if jumped != seen_jumped:
                    # The host's clock jumped ahead (the twin's clock follows at once): arrival
                    # times before and after fit no one line, and the old minima would hold
                    # rows ~the step behind for minutes. The line moves by the jump. A step
                    # back needs nothing: the twin's clock slews through it without a jump.
                    self.clock_estimator.shift(jumped - seen_jumped)
                    seen_jumped = jumped
                now = time.monotonic()
                if data:
                    n_before = pending.rows
                    self._on_frames(self.decoder.feed(data), host, assembler, pending)
                    if pending.rows != n_before:
                        last_samples = now
                    self._sync_counters()
                if pending.rows and (host - pending.since >= self.batch_s or pending.rows >= 4096):
                    self._flush(pending)
                if self._mapper is None and now - last_describe >= _DESCRIBE_RETRY_S:
                    # Samples of an unknown layout, or a broken description: ask again.
                    _write(ser, bp.encode_command(bp.FrameType.CMD_DESCRIBE, self._next_token()))
                    last_describe = now
                elif now - last_samples >= _START_RETRY_S and now - last_start >= _START_RETRY_S:
                    # Our START may have been lost on the wire; it is idempotent.
                    _write(ser, bp.encode_command(bp.FrameType.CMD_START, self._next_token()))
                    last_start = now
        except TransientSourceError as exc:
            if pending.rows:
                self._flush(pending)
            if not self._stop.is_set():
                self._post(exc)
        except Exception as exc:  # any worker failure must reach the supervisor
            _LOGGER.exception("serial %s: reader failed", self.name)
            self._post(TransientSourceError(f"serial {self.name}: reader failed: {exc!r}"))
        else:
            if pending.rows:
                self._flush(pending)

    def _on_frames(
        self,
        frames: list[bp.Frame],
        host: float,
        assembler: bp.DescriptorAssembler,
        pending: _Pending,
    ) -> None:
        """Frames of one read: runs of SAMPLES frames mapped together, the rest one by one."""
        run: list[bp.SamplesFrame] = []
        for frame in frames:
            if isinstance(frame, bp.SamplesFrame) and self._mapper is not None:
                run.append(frame)
                continue
            self._on_run(run, host, assembler, pending)
            run = []
            self._on_frame(frame, host, assembler, pending)
        self._on_run(run, host, assembler, pending)

    def _on_run(
        self,
        run: list[bp.SamplesFrame],
        host: float,
        assembler: bp.DescriptorAssembler,
        pending: _Pending,
    ) -> None:
        mapper = self._mapper
        if len(run) < 2 or mapper is None:
            for frame in run:
                self._on_frame(frame, host, assembler, pending)
            return
        try:
            t, values, _ = mapper.on_run(run, host)
        except _NotARun:  # nothing of the mapper changed: frame by frame, as ever
            for frame in run:
                self._on_frame(frame, host, assembler, pending)
            return
        if not pending.rows:
            pending.since = host
        pending.t.append(t)
        pending.values.append(values)
        pending.rows += len(t)

    def _on_frame(
        self,
        frame: bp.Frame,
        host: float,
        assembler: bp.DescriptorAssembler,
        pending: _Pending,
    ) -> None:
        if isinstance(frame, bp.SamplesFrame):
            mapper = self._mapper
            if mapper is None:
                self._worker_drops += frame.n_rows
                return
            try:
                t, values, gaps = mapper.on_samples(frame, host)
            except bp.BadFrame:
                self._extra_bad += 1
                return
            if not pending.rows:
                pending.since = host
            pending.t.append(t)
            pending.values.append(values)
            pending.gaps.extend(gaps)
            pending.rows += len(t)
            self.counters.gaps = self._gaps_before + mapper.gaps
            self.counters.extra["lost_samples"] = self._lost_before + mapper.lost_samples
            self.counters.extra["device_restarts"] = mapper.restarts
        elif isinstance(frame, (bp.DeviceFrame, bp.ChannelFrame)):
            if isinstance(frame, bp.DeviceFrame) and pending.rows:
                self._flush(pending)  # rows of the old layout go out under the old layout
            if isinstance(frame, bp.DeviceFrame) and self._mapper is not None:
                # A new description is coming (reboot, rate change, or our DESCRIBE retry):
                # hold samples until it is complete, then keep the mapper if nothing changed.
                self._previous = self._mapper
                self._mapper = None
            try:
                descriptor = assembler.feed(frame)
            except bp.BadFrame:
                self._extra_bad += 1
                return
            if descriptor is not None:
                self._install(descriptor)
        elif isinstance(frame, bp.AckFrame) and frame.status != bp.AckStatus.OK:
            _LOGGER.warning(
                "serial %s: device refused command 0x%02x: %s",
                self.name,
                frame.command,
                frame.status.name,
            )
        # Command frames from a device are echoes of nothing we expect; ignore them.

    def _flush(self, pending: _Pending) -> None:
        mapper = self._mapper
        assert mapper is not None or not pending.rows
        if mapper is None:
            return
        meta = dict(mapper.meta)
        if pending.gaps:
            meta["gaps"] = pending.gaps
        batch = SampleBatch(
            mapper.stream,
            mapper.channels,
            mapper.units,
            np.concatenate(pending.t),
            np.concatenate(pending.values),
            meta,
        )
        pending.t = []
        pending.values = []
        pending.gaps = []
        pending.rows = 0
        self._post(batch)

    def _post(self, item: SampleBatch | BaseException) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closed between the check and the call
            loop.call_soon_threadsafe(self._enqueue, item)

    def _enqueue(self, item: SampleBatch | BaseException) -> None:
        """Loop-thread: bounded hand-over; a slow consumer loses the oldest batch."""
        queue = self._queue
        if queue is None:
            return
        if queue.full():
            old = queue.get_nowait()
            if isinstance(old, SampleBatch):
                self._queue_drops += len(old)
                self.counters.drops = self._worker_drops + self._queue_drops
        queue.put_nowait(item)


# -- discovery ---------------------------------------------------------------


def probe_port(
    port: str, baud: int = DEFAULT_BAUD, timeout_s: float = 0.5
) -> dict[str, Any] | None:
    """Ask ``port`` to DESCRIBE itself; its facts, or None if nothing answered in time.

    The answer holds ``device_id``, ``model``, ``firmware``, ``rate_hz``, ``channels``
    (count) and, when the whole descriptor arrived in time, ``channel_names``.
    """
    try:
        ser = _open_port(port, baud)
    except SourceError:
        return None
    try:
        decoder = bp.StreamDecoder()
        decoder.reset(mid_stream=True)
        assembler = bp.DescriptorAssembler()
        _write(ser, bp.encode_command(bp.FrameType.CMD_DESCRIBE, 1))
        deadline = time.monotonic() + timeout_s
        info: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            data = _read(ser, port)
            for frame in decoder.feed(data):
                if not isinstance(frame, (bp.DeviceFrame, bp.ChannelFrame)):
                    continue
                if isinstance(frame, bp.DeviceFrame):
                    info = {
                        "device_id": frame.device_id,
                        "model": frame.model,
                        "firmware": "{}.{}.{}".format(*frame.firmware),
                        "channels": frame.n_channels,
                        "rate_hz": frame.rate_hz,
                    }
                try:
                    descriptor = assembler.feed(frame)
                except bp.BadFrame:
                    continue
                if descriptor is not None and info is not None:
                    info["channel_names"] = list(descriptor.names)
                    return info
        return info
    except SourceError:
        return None
    finally:
        _close_port(ser)


def scan_ports(probe: bool = True, timeout_s: float = 0.5) -> list[dict[str, Any]]:
    """Serial ports with their USB VID:PID; with ``probe``, USB ports that answer DESCRIBE.

    Probing writes one 7-byte DESCRIBE frame to each USB serial port, so it is
    done only for ports with a USB VID:PID (never for built-in UARTs).
    """
    from serial.tools import list_ports

    found: list[dict[str, Any]] = []
    for info in sorted(list_ports.comports(), key=lambda p: p.device):
        usb = info.vid is not None and info.pid is not None
        entry: dict[str, Any] = {
            "port": info.device,
            "vid_pid": f"{info.vid:04x}:{info.pid:04x}" if usb else None,
            "description": info.description,
            "manufacturer": info.manufacturer,
            "serial_number": info.serial_number,
            "bridge": None,
        }
        if probe and usb:
            entry["bridge"] = probe_port(info.device, timeout_s=timeout_s)
        found.append(entry)
    return found


# -- pyserial boundary -------------------------------------------------------


def _open_port(port: str, baud: int) -> Any:
    """Open a port or URL; pyserial's errors become ``SourceError``s."""
    import serial

    kwargs: dict[str, Any] = {"baudrate": baud, "timeout": _READ_TIMEOUT_S, "write_timeout": 1.0}
    if "://" not in port:
        kwargs["exclusive"] = True  # a second daemon must not interleave reads on the same port
    try:
        return serial.serial_for_url(port, **kwargs)
    except serial.SerialException as exc:
        code = getattr(exc, "errno", None)
        if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            raise DeviceNotFound(
                f"serial port {port} does not exist", hint="plug the device in or check the path"
            ) from exc
        if code == errno.EACCES:
            raise PairingRefused(
                f"no permission to open {port}",
                hint="add your user to the 'dialout' group and log in again",
            ) from exc
        if "://" in port and isinstance(exc.__cause__ or exc.__context__, OSError):
            raise DeviceNotFound(f"nothing answers at {port}: {exc}") from exc
        raise TransientSourceError(f"cannot open serial port {port}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise DeviceNotFound(f"cannot open serial port {port}: {exc}") from exc


@contextlib.contextmanager
def _port_lost_raises(port: str) -> Iterator[None]:
    """pyserial's errors of a read become ``TransientSourceError`` (reconnect)."""
    import serial

    try:
        yield
    except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
        # TypeError/AttributeError: pyserial's posix read after a concurrent close (fd None).
        raise TransientSourceError(
            f"serial port {port} went away: {exc}", hint="reconnecting when it is back"
        ) from exc


def _read(ser: Any, port: str) -> bytes:
    """Up to everything waiting (blocking at most the read timeout); a lost port raises."""
    with _port_lost_raises(port):
        data: bytes = ser.read(max(1, ser.in_waiting))
    return data


def _read_waiting(ser: Any, port: str) -> bytes:
    """What is already waiting, without blocking; a lost port raises."""
    with _port_lost_raises(port):
        waiting = ser.in_waiting
        data: bytes = ser.read(waiting) if waiting else b""
    return data


def _write(ser: Any, data: bytes) -> None:
    import serial

    try:
        ser.write(data)
    except serial.SerialTimeoutException:
        _LOGGER.debug("serial write timed out; the device is not reading")
    except (serial.SerialException, OSError) as exc:
        raise TransientSourceError(
            f"serial port {ser.port} went away: {exc}", hint="reconnecting when it is back"
        ) from exc


def _stop_and_close(ser: Any, token: int) -> None:
    with contextlib.suppress(Exception):
        ser.write(bp.encode_command(bp.FrameType.CMD_STOP, token))
    _close_port(ser)


def _close_port(ser: Any) -> None:
    with contextlib.suppress(Exception):
        ser.close()


def _int_layout(descriptor: bp.Descriptor) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Gather indices turning a packed row into little-endian int32 lanes, plus sign lanes."""
    gather = np.zeros((len(descriptor.channels), 4), dtype=np.intp)
    mask = np.zeros((len(descriptor.channels), 4), dtype=bool)
    pos = 0
    for j, channel in enumerate(descriptor.channels):
        width = int(channel.fmt)
        for k in range(4):
            gather[j, k] = pos + min(k, width - 1)
            mask[j, k] = k >= width  # filled with the sign of the top byte
        pos += width
    return gather, mask
