"""Particulate sensors on USB serial: Plantower PMS5003, Nova SDS011, Sensirion SPS30.

``ParticulateSource`` opens the port in a worker thread and feeds a bounded
queue with ``<name>.air`` batches (``pm1_0``, ``pm2_5``, ``pm10`` in µg/m³ plus
each sensor's raw extras), stamped at host receipt. PMS5003 and SDS011 stream
frames that a ``FrameScanner`` cuts out (checksums verified, partial frames
buffered, resync after garbage); SDS011 is first told its working period so
its laser sleeps between readings. SPS30 is polled over SHDLC through
Sensirion's own driver (``sensirion-shdlc-driver``). A sensor silent for
``stale_s`` or an unplugged port raises ``TransientSourceError``; the daemon's
runner reconnects with backoff. ``probe_air_sensor`` and ``detect_air_sensors``
autodetect sensors for ``pair scan``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

import edgetwin.clock as twin_clock
from edgetwin.errors import (
    DeviceNotFound,
    DriverMissing,
    MalformedInput,
    SourceError,
    TransientSourceError,
)
from edgetwin.sources import particulate_protocol as pp
from edgetwin.sources.base import Source
from edgetwin.sources.serial import _close_port, _open_port, _read, _write
from edgetwin.types import SampleBatch

_LOGGER = logging.getLogger(__name__)

SENSORS = pp.SENSORS
_PM_UNIT = "µg/m³"
_SPS_ADDRESS = 0
_READ_TIMEOUT_S = 0.25
# USB-UART bridge chips these sensors ship with or are wired through (CH340, CP210x, FTDI,
# PL2303). Only such ports are probed by ``detect_air_sensors``: a microcontroller's own USB
# (an edgetwin bridge, a phone, a printer) never receives a particulate sensor's command.
UART_BRIDGE_VIDS = frozenset({0x1A86, 0x10C4, 0x0403, 0x067B})


def channels_of(sensor: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(channels, units)`` of a sensor's ``.air`` stream."""
    chans: tuple[str, ...]
    if sensor == "pms5003":
        chans = pp.PM_CHANNELS + pp.PMS_COUNT_CHANNELS
        return chans, (_PM_UNIT,) * 3 + ("1/0.1L",) * 6
    if sensor == "sds011":
        # The SDS011 measures PM2.5 and PM10 only: no column of NaNs for a PM1.0 it never has.
        return ("pm2_5", "pm10"), (_PM_UNIT, _PM_UNIT)
    if sensor == "sps30":
        chans = pp.PM_CHANNELS + pp.SPS_EXTRA_CHANNELS
        return chans, (_PM_UNIT,) * 4 + ("1/cm³",) * 5 + ("µm",)
    raise MalformedInput(
        f"unknown particulate sensor {sensor!r}", hint=f"use one of {', '.join(SENSORS)}"
    )


def decode_row(sensor: str, frame: bytes) -> list[float]:
    """Physical values of one verified frame (PMS5003, SDS011) or SPS30 payload, channel order."""
    if sensor == "pms5003":
        w = pp.pms_decode(frame)
        # words 3..5: "atmospheric environment" concentrations; 6..11: counts per 0.1 L
        return [float(v) for v in (w[3], w[4], w[5], *w[6:12])]
    if sensor == "sds011":
        pm25, pm10 = struct.unpack_from("<HH", frame, 2)
        return [pm25 / 10.0, pm10 / 10.0]
    v = struct.unpack(">10f", frame)
    # wire order: mass 1.0 2.5 4.0 10, number 0.5 1.0 2.5 4.0 10, typical size
    return [float(x) for x in (v[0], v[1], v[3], v[2], *v[4:10])]


class ParticulateSource(Source):
    """One PMS5003, SDS011 or SPS30 on a serial port."""

    kind = "particulate"

    def __init__(
        self,
        name: str,
        port: str,
        sensor: str,
        *,
        baud: int | None = None,
        working_period_min: int = 1,
        poll_s: float = 1.0,
        stale_s: float | None = None,
        handshake_timeout_s: float = 3.0,
        queue_batches: int = 64,
        clock: Callable[[], float] = twin_clock.now,
    ) -> None:
        super().__init__(name)
        self.channels, self.units = channels_of(sensor)
        if not 0 <= working_period_min <= 30:
            raise MalformedInput(
                f"{name}: SDS011 working period {working_period_min} is not 0..30 minutes",
                hint="0 reads continuously (laser always on); 1..30 sleeps between readings",
            )
        self.sensor = sensor
        self.port = port
        self.baud = baud or pp.BAUD[sensor]
        self.working_period_min = working_period_min if sensor == "sds011" else 0
        self.poll_s = poll_s
        period = 60.0 * self.working_period_min if self.working_period_min else 1.0
        self.stale_s = stale_s if stale_s is not None else max(10.0, 3.0 * period)
        # the daemon's watchdog must not call a sleeping SDS011 dead before our own watchdog
        self.silence_tolerance_s = self.stale_s + 5.0
        self.handshake_timeout_s = handshake_timeout_s
        self.queue_batches = queue_batches
        self.stream_name = f"{name}.air"
        self.low, self.high = pp.PM_RANGE[sensor]
        self._clock = clock
        self._n_pm = sum(1 for u in self.units if u == _PM_UNIT)
        self.scanner: pp.FrameScanner | None = None
        self.device_info: dict[str, Any] = {}
        self._serial: Any = None
        self._shdlc: Any = None  # (port, device) of Sensirion's driver
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: asyncio.Queue[SampleBatch | BaseException] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bad_before = 0  # bad packets of earlier connections
        self._queue_drops = 0
        self.counters.extra.update({"implausible": 0, "timeouts": 0, "skipped_bytes": 0})

    @classmethod
    def from_record(cls, name: str, record: dict[str, Any]) -> ParticulateSource:
        """Build from ``{"kind": "particulate", "port": ..., "sensor": "sds011", ...}``."""
        if record.get("kind") != "particulate":
            raise MalformedInput(
                f"pairing {name!r}: kind is {record.get('kind')!r}, not 'particulate'",
                hint="re-pair it with 'edgetwin pair add serial PORT --sensor SENSOR'",
            )
        return cls(
            name,
            str(record["port"]),
            str(record["sensor"]),
            baud=int(record["baud"]) if record.get("baud") else None,
            working_period_min=int(record.get("working_period_min", 1)),
        )

    async def connect(self) -> None:
        """Open the port and check the sensor answers (SDS011: set its working period)."""
        if self._thread is not None:
            await self.close()
        self._stop.clear()
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=self.queue_batches)
        try:
            first = await asyncio.to_thread(self._open_and_handshake)
        except BaseException:
            await asyncio.to_thread(self._close_links)
            self._queue = None
            raise
        self._thread = threading.Thread(
            target=self._reader, args=(first,), name=f"particulate-{self.name}", daemon=True
        )
        self._thread.start()

    async def stream(self) -> AsyncIterator[SampleBatch]:
        """Batches until the port drops or the sensor goes silent (``TransientSourceError``)."""
        queue = self._queue
        if queue is None:
            raise TransientSourceError(f"particulate {self.name}: not connected")
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            self.counters.count(item)
            yield item

    async def close(self) -> None:
        """Stop the worker and release the port; safe to call twice."""
        self._stop.set()
        ser = self._serial
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.cancel_read()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, 3.0)
            self._thread = None
        await asyncio.to_thread(self._close_links)
        self._queue = None

    def describe(self) -> dict[str, Any]:
        """Sensor facts and link health for ``status``."""
        out: dict[str, Any] = {"sensor": self.sensor, **self.device_info}
        if self.scanner is not None:
            out["bad_packets_by_reason"] = dict(self.scanner.stats.bad_by_reason)
        if self.sensor == "sds011":
            out["working_period_min"] = self.working_period_min
        return out

    # -- private: worker thread --------------------------------------------------------------

    def _open_and_handshake(self) -> list[float] | None:
        if self.sensor == "sps30":
            self._open_sps30()
            return None
        self._serial = _open_port(self.port, self.baud)
        with contextlib.suppress(Exception):  # stale frames buffered before we opened it
            self._serial.reset_input_buffer()
        # Frames come at most once a second: waking 4 times a second (not 20, as a bridge
        # needs) keeps the source's CPU low on a Pi; close() cancels a pending read.
        self._serial.timeout = _READ_TIMEOUT_S
        self._bad_before = self.counters.bad_packets
        self.scanner = pp.FrameScanner(self.sensor)
        deadline = time.monotonic() + self.handshake_timeout_s
        if self.sensor == "sds011":
            return self._handshake_sds011(deadline)
        while time.monotonic() < deadline and not self._stop.is_set():
            frames = self.scanner.feed(_read(self._serial, self.port))
            self._sync_bad()
            if frames:
                return decode_row(self.sensor, frames[-1])
        raise DeviceNotFound(
            f"particulate {self.name}: no PMS5003 frame on {self.port} "
            f"within {self.handshake_timeout_s:g} s",
            hint="check the cable (TX to RX), 5 V power and that SET is high; "
            "a sensor that is still waking is retried",
        )

    def _handshake_sds011(self, deadline: float) -> list[float] | None:
        assert self.scanner is not None
        work = pp.sds_command(pp.SDS_SLEEP_WORK, bytes([1, 1]))  # wake the laser if asleep
        period = pp.sds_set_working_period(self.working_period_min)
        next_ask = 0.0
        first: list[float] | None = None
        while time.monotonic() < deadline and not self._stop.is_set():
            if time.monotonic() >= next_ask:
                _write(self._serial, work + period)
                next_ask = time.monotonic() + 1.0
            for frame in self.scanner.feed(_read(self._serial, self.port)):
                if frame[1] == pp.SDS_DATA:
                    first = decode_row(self.sensor, frame)
                elif frame[2] == pp.SDS_WORKING_PERIOD and frame[3] == 1:
                    self.device_info["device_id"] = f"{frame[6] | frame[7] << 8:04x}"
                    if frame[4] != self.working_period_min:
                        continue  # an echo of another setting; ask again
                    self._sync_bad()
                    return first
            self._sync_bad()
        raise DeviceNotFound(
            f"particulate {self.name}: the SDS011 on {self.port} did not confirm its working "
            f"period within {self.handshake_timeout_s:g} s",
            hint="check the cable and 5 V power; a sensor that is still waking is retried",
        )

    def _open_sps30(self) -> None:
        shdlc = _shdlc()
        try:
            port = shdlc.ShdlcSerialPort(port=self.port, baudrate=self.baud)
        except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
            raise _open_error(self.port, exc) from exc
        self._shdlc = (port, shdlc.ShdlcDevice(shdlc.ShdlcConnection(port), _SPS_ADDRESS))
        device = self._shdlc[1]
        try:
            product = device.get_product_type()
            if product != pp.SPS_PRODUCT_TYPE:
                raise DeviceNotFound(
                    f"particulate {self.name}: {self.port} is a Sensirion {product!r}, "
                    "not an SPS30",
                    hint="pair it with the right --sensor",
                )
            self.device_info["serial_number"] = device.get_serial_number()
            # start measurement, big-endian IEEE754 floats
            device.execute(shdlc.ShdlcCommand(pp.SPS_START, [0x01, 0x03], 0.5, 0, 0))
        except shdlc.ShdlcTimeoutError as exc:
            raise DeviceNotFound(
                f"particulate {self.name}: no SPS30 answered on {self.port}",
                hint="check the cable (SEL pin floating selects UART) and 5 V power",
            ) from exc
        except shdlc.ShdlcError as exc:
            raise TransientSourceError(
                f"particulate {self.name}: SPS30 start failed: {exc}", hint="retrying"
            ) from exc
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # serial.SerialException is an OSError; TypeError/AttributeError: pyserial's
            # posix read after a concurrent close (fd None)
            raise _lost(self.port, exc) from exc

    def _reader(self, first: list[float] | None) -> None:
        last_good = time.monotonic()
        try:
            if first is not None:
                self._emit(first)
            while not self._stop.is_set():
                rows = self._poll_sps30() if self.sensor == "sps30" else self._read_frames()
                for row in rows:
                    self._emit(row)
                now = time.monotonic()
                if rows:
                    last_good = now
                elif now - last_good > self.stale_s:
                    raise TransientSourceError(
                        f"particulate {self.name}: the {self.sensor} sent nothing valid for "
                        f"{self.stale_s:g} s",
                        hint="reconnecting; check the sensor's power and fan if this repeats",
                    )
        except TransientSourceError as exc:
            if not self._stop.is_set():
                self._post(exc)
        except Exception as exc:  # any worker failure must reach the supervisor
            _LOGGER.exception("particulate %s: reader failed", self.name)
            self._post(TransientSourceError(f"particulate {self.name}: reader failed: {exc!r}"))

    def _read_frames(self) -> list[list[float]]:
        assert self.scanner is not None
        frames = self.scanner.feed(_read(self._serial, self.port))
        self._sync_bad()
        # SDS011 replies (0xC5) to our commands are not readings
        return [decode_row(self.sensor, f) for f in frames if f[1] != pp.SDS_REPLY]

    def _poll_sps30(self) -> list[list[float]]:
        shdlc = _shdlc()
        self._stop.wait(self.poll_s)
        if self._stop.is_set():
            return []
        device = self._shdlc[1]
        try:
            data, _ = device.connection.execute(
                _SPS_ADDRESS, shdlc.ShdlcCommand(pp.SPS_READ, [], 0.5, 0, 40)
            )
        except shdlc.ShdlcTimeoutError:
            self.counters.extra["timeouts"] += 1
            return []
        except shdlc.ShdlcResponseError:
            self.counters.bad_packets += 1  # bad checksum, length or address: skipped
            return []
        except shdlc.ShdlcError as exc:
            raise TransientSourceError(f"particulate {self.name}: SPS30: {exc}") from exc
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # a vanished port
            raise _lost(self.port, exc) from exc
        if data is None or len(data) != 40:
            return []  # no new measurement since the last read
        return [decode_row("sps30", bytes(data))]

    def _emit(self, row: list[float]) -> None:
        values = np.asarray([row], dtype=np.float64)
        pm = values[0, : self._n_pm]
        bad = ~((pm >= self.low) & (pm <= self.high))
        meta: dict[str, Any] = {"source": "particulate", "sensor": self.sensor}
        if bad.any():
            self.counters.extra["implausible"] += int(bad.sum())
            meta["implausible"] = {
                self.channels[j]: float(pm[j]) for j in np.flatnonzero(bad)
            }
            values[0, : self._n_pm][bad] = math.nan
            _LOGGER.debug("particulate %s: masked implausible %s", self.name, meta["implausible"])
        t = np.asarray([self._clock()], dtype=np.float64)
        self._post(SampleBatch(self.stream_name, self.channels, self.units, t, values, meta))

    def _sync_bad(self) -> None:
        if self.scanner is not None:
            self.counters.bad_packets = self._bad_before + self.scanner.stats.bad_checksum
            self.counters.extra["skipped_bytes"] = self.scanner.stats.skipped_bytes

    def _close_links(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            _close_port(ser)
        shdlc, self._shdlc = self._shdlc, None
        if shdlc is not None:
            with contextlib.suppress(Exception):
                shdlc[1].execute(_shdlc().ShdlcCommand(pp.SPS_STOP, [], 0.2, 0, 0))
            with contextlib.suppress(Exception):
                shdlc[0].close()

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
                self.counters.drops = self._queue_drops
        queue.put_nowait(item)


# -- discovery ---------------------------------------------------------------------------------


def probe_air_sensor(
    port: str, listen_s: float = 3.0, sensors: tuple[str, ...] = SENSORS
) -> dict[str, Any] | None:
    """Which particulate sensor answers on ``port``: ``{"sensor": ..., ...}`` or None.

    At 9600 baud: one SDS011 firmware query, then listen up to ``listen_s`` for
    an SDS011 reply or data frame or a PMS5003 frame (it streams by itself).
    Then at 115200 baud: one SHDLC device-information request (SPS30).
    ``sensors`` limits the probe to those sensors.
    """
    if not {"pms5003", "sds011"} & set(sensors):
        return _probe_sps30(port) if "sps30" in sensors else None
    try:
        ser = _open_port(port, 9600)
    except SourceError:
        return None
    try:
        scanners = {s: pp.FrameScanner(s) for s in ("pms5003", "sds011") if s in sensors}
        if "sds011" in sensors:
            _write(ser, pp.sds_command(pp.SDS_FIRMWARE))
        deadline = time.monotonic() + listen_s
        while time.monotonic() < deadline:
            data = _read(ser, port)
            for sensor, scanner in scanners.items():
                frames = scanner.feed(data)
                if frames:
                    f = frames[0]
                    info: dict[str, Any] = {"sensor": sensor}
                    if sensor == "sds011":
                        info["device_id"] = f"{f[6] | f[7] << 8:04x}"
                    return info
    except SourceError:
        return None
    finally:
        _close_port(ser)
    return _probe_sps30(port) if "sps30" in sensors else None


def detect_air_sensors(entries: list[dict[str, Any]], listen_s: float = 3.0) -> None:
    """Add ``"air"`` (the probe's answer or None) to scan entries of USB-UART bridge ports.

    Only ports whose USB vendor is a UART bridge chip and that did not answer as
    an edgetwin bridge are candidates; the rest are never written to. Ports
    are probed in parallel, so the scan takes about ``listen_s`` + 1 s.
    """
    candidates = [
        e for e in entries
        if e.get("vid_pid") and int(str(e["vid_pid"]).split(":")[0], 16) in UART_BRIDGE_VIDS
        and not e.get("bridge")
    ]
    if not candidates:
        return
    with ThreadPoolExecutor(max_workers=min(8, len(candidates))) as pool:
        answers = list(pool.map(lambda e: probe_air_sensor(e["port"], listen_s), candidates))
    for entry, answer in zip(candidates, answers, strict=True):
        entry["air"] = answer


def _probe_sps30(port: str) -> dict[str, Any] | None:
    try:
        shdlc = _shdlc()
    except DriverMissing:
        return None
    try:
        link = shdlc.ShdlcSerialPort(port=port, baudrate=115200, additional_response_time=0.05)
    except (OSError, ValueError):  # the port vanished between the two probes
        return None
    try:
        device = shdlc.ShdlcDevice(shdlc.ShdlcConnection(link), _SPS_ADDRESS)
        if device.get_product_type() == pp.SPS_PRODUCT_TYPE:
            return {"sensor": "sps30", "serial_number": device.get_serial_number()}
    except (shdlc.ShdlcError, OSError, ValueError, TypeError, AttributeError):
        return None  # no SHDLC device there: a timeout, garbage or a closed port
    finally:
        with contextlib.suppress(Exception):
            link.close()
    return None


# -- boundary helpers --------------------------------------------------------------------------


def _shdlc() -> Any:
    """Sensirion's SHDLC driver, imported on first use."""
    try:
        import sensirion_shdlc_driver as shdlc
        from sensirion_shdlc_driver import command, errors
    except ImportError as exc:
        raise DriverMissing(
            "the SPS30 needs Sensirion's SHDLC driver, which is not installed",
            hint="pip install 'sensirion-shdlc-driver>=1.0'",
        ) from exc
    ns = {
        "ShdlcSerialPort": shdlc.ShdlcSerialPort,
        "ShdlcConnection": shdlc.ShdlcConnection,
        "ShdlcDevice": shdlc.ShdlcDevice,
        "ShdlcCommand": command.ShdlcCommand,
        "ShdlcError": errors.ShdlcError,
        "ShdlcTimeoutError": errors.ShdlcTimeoutError,
        "ShdlcResponseError": errors.ShdlcResponseError,
    }
    return type("Shdlc", (), ns)


def _open_error(port: str, exc: BaseException) -> SourceError:
    code = getattr(exc, "errno", None)
    if code is not None or isinstance(exc, (OSError, ValueError)):
        return DeviceNotFound(f"cannot open serial port {port}: {exc}",
                              hint="plug the sensor in or check the path")
    return TransientSourceError(f"cannot open serial port {port}: {exc}")


def _lost(port: str, exc: BaseException) -> TransientSourceError:
    return TransientSourceError(
        f"serial port {port} went away: {exc}", hint="reconnecting when it is back"
    )
