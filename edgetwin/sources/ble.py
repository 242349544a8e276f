"""Bluetooth LE health sensors through bleak: heart-rate straps, pulse oximeters, thermometers.

One ``BleSource`` per device. ``connect`` finds the device (BlueZ's cache, else
a scan), connects with ``bleak-retry-connector``'s ``establish_connection``
(the retry logic Home Assistant relies on for flaky radios), checks that the
device offers its profile's characteristics and subscribes to them. Each
notification is stamped with the host clock when it arrives and parsed by the
pure ``edgetwin.sources.gatt`` module. Streams, named ``<source>.<type>``:

=================  ==============  =============================================
stream             channels        from
=================  ==============  =============================================
``<name>.hr``      ``hr``          Heart Rate Measurement (bpm)
``<name>.rr``      ``rr``          its RR-intervals (ms), one row per beat, each
                                   stamped at the end of its interval, counted
                                   back from the reception time
``<name>.spo2``    ``spo2``, ``hr``  PLX continuous and spot-check: SpO2 (%) and
                                   pulse rate (bpm)
``<name>.temp``    ``temp``        Temperature Measurement (°C; °F converted)
``<name>.battery`` ``battery``     Battery Level (%), read at connect and then
                                   notified or polled
``<name>.climate`` ``temp``,       Environmental Sensing (0x181A): °C, %, hPa;
                   ``humidity``,   notified where the characteristic can, else
                   ``pressure``    read every ``read_interval_s`` (NaN in the
                                   channels a row does not carry)
=================  ==============  =============================================

Bad input never ends the stream: a notification that breaks its format counts
in ``counters.bad_packets``; a value outside physiology (RR outside
250-2500 ms, rate outside 20-250 bpm, no skin contact, SpO2 flagged invalid,
temperature outside 25-45 °C) counts in ``counters.drops``; both are dropped
and shown by ``describe()``. A link drop ends the stream with
``TransientSourceError`` (the daemon's supervisor reconnects with backoff); it
counts in ``counters.gaps`` and ``describe()["last_gap"]`` says when data
stopped and when it flowed again. A
device that lacks every measurement characteristic of its profile raises
``PairingRefused`` (a person must act), which the supervisor waits out longest.

bleak and bleak-retry-connector are imported inside the coroutines: the
daemon only pays for them when a BLE device is paired.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import math
import re
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import edgetwin.clock as twin_clock
from edgetwin.errors import (
    DeviceNotFound,
    PairingRefused,
    SourceError,
    TransientSourceError,
)
from edgetwin.sources import gatt
from edgetwin.sources.base import Source
from edgetwin.types import SampleBatch

if TYPE_CHECKING:
    from bleak import BleakClient
    from bleak.backends.characteristic import BleakGATTCharacteristic

_LOGGER = logging.getLogger(__name__)

# Physiological plausibility: outside these the value is an artefact, not a measurement.
RR_MIN_MS = 250.0  # 240 bpm
RR_MAX_MS = 2500.0  # 24 bpm; longer is a missed beat
HR_MIN_BPM = 20.0
HR_MAX_BPM = 250.0
TEMP_MIN_C = 25.0
TEMP_MAX_C = 45.0

_ADDRESS = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")

# D-Bus errors from bluetoothd that mean "the device will not let us in until a person acts".
_PAIRING_ERRORS = frozenset(
    {
        "org.bluez.Error.AuthenticationFailed",
        "org.bluez.Error.AuthenticationRejected",
        "org.bluez.Error.AuthenticationCanceled",
        "org.bluez.Error.AuthenticationTimeout",
        "org.bluez.Error.NotAuthorized",
        "org.bluez.Error.NotPermitted",
    }
)


@dataclass(frozen=True, slots=True)
class Profile:
    """A SIG health profile: its service, what to subscribe to and what to read once."""

    name: str
    service: str
    measurements: tuple[str, ...]  # at least one must exist
    reads: tuple[str, ...] = ()  # optional one-off reads (sensor site)


PROFILES: dict[str, Profile] = {
    "heart_rate": Profile(
        "heart_rate", gatt.HEART_RATE_SERVICE, (gatt.HEART_RATE_MEASUREMENT,),
        (gatt.BODY_SENSOR_LOCATION,),
    ),
    "pulse_oximeter": Profile(
        "pulse_oximeter", gatt.PULSE_OXIMETER_SERVICE,
        (gatt.PLX_CONTINUOUS, gatt.PLX_SPOT_CHECK),
    ),
    "thermometer": Profile(
        "thermometer", gatt.HEALTH_THERMOMETER_SERVICE, (gatt.TEMPERATURE_MEASUREMENT,),
        (gatt.TEMPERATURE_TYPE,),
    ),
    # Room climate over GATT (BTHome adverts are edgetwin.sources.bthome's job).
    "environmental": Profile(
        "environmental", gatt.ENVIRONMENTAL_SENSING_SERVICE,
        (gatt.ESS_TEMPERATURE, gatt.ESS_HUMIDITY, gatt.ESS_PRESSURE),
    ),
}
# ESS characteristic -> channel of ``<name>.climate``
ESS_CHANNELS: dict[str, str] = {
    gatt.ESS_TEMPERATURE: "temp", gatt.ESS_HUMIDITY: "humidity", gatt.ESS_PRESSURE: "pressure",
}
CLIMATE_CHANNELS = ("temp", "humidity", "pressure")
SERVICE_PROFILES: dict[str, str] = {p.service: p.name for p in PROFILES.values()}


def normalize_address(address: str) -> str | None:
    """``aa:bb:..`` or ``AA-BB-..`` as BlueZ spells it (``AA:BB:..``), or None if not an address."""
    candidate = address.strip().upper().replace("-", ":")
    return candidate if _ADDRESS.match(candidate) else None


class BleSource(Source):
    """One BLE health device (heart-rate strap, pulse oximeter or thermometer)."""

    kind = "ble"

    def __init__(
        self,
        name: str,
        address: str,
        profile: str,
        *,
        device_name: str = "",
        notify_mode: str = "start",
        connect_timeout_s: float = 45.0,
        scan_timeout_s: float = 10.0,
        battery_interval_s: float = 600.0,
        read_interval_s: float = 30.0,
        max_attempts: int = 3,
        queue_size: int = 4096,
        clock: Callable[[], float] = twin_clock.now,
    ) -> None:
        super().__init__(name)
        norm = normalize_address(address)
        if norm is None:
            raise ValueError(f"{address!r} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)")
        if profile not in PROFILES:
            raise ValueError(f"unknown BLE profile {profile!r}; known: {', '.join(PROFILES)}")
        if notify_mode not in ("start", "acquire"):
            raise ValueError(f"notify mode {notify_mode!r} must be 'start' or 'acquire'")
        self.address = norm
        self.profile = PROFILES[profile]
        if self.profile.name in ("thermometer", "environmental"):
            # Thermometers indicate now and then; ESS sensors notify on change or are polled.
            self.silence_tolerance_s = max(900.0, 3 * read_interval_s)
        self.read_interval_s = read_interval_s
        self.device_name = device_name
        self.notify_mode = notify_mode
        self.connect_timeout_s = connect_timeout_s
        self.scan_timeout_s = scan_timeout_s
        self.battery_interval_s = battery_interval_s
        self.max_attempts = max_attempts
        self._clock = clock
        self._client: BleakClient | None = None
        self._events: collections.deque[tuple[float, str, bytes]] = collections.deque()
        self._queue_size = queue_size
        self._wakeup = asyncio.Event()
        self._lost: str | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_t: dict[str, float] = {}
        self._meta: dict[str, Any] = {"profile": profile}
        if device_name:
            self._meta["device"] = device_name
        self._missing: list[str] = []
        self._battery: int | None = None
        self._notifications = 0
        self._bad_by_char: collections.Counter[str] = collections.Counter()
        self._dropped: collections.Counter[str] = collections.Counter()
        self._warned: set[str] = set()
        self._lost_at: float | None = None
        self._last_gap: tuple[float, float] | None = None

    @classmethod
    def from_record(cls, name: str, record: dict[str, Any]) -> Source:
        """Build from a pairing record ``{"kind": "ble", "address", "profile", "device"}``.

        ``device`` is the advertised device name (older records call it ``name``). Profile
        ``bthome`` needs no connection: it is read from adverts by ``bthome.BTHomeSource``.
        """
        if record.get("profile") == "bthome":
            from edgetwin.sources.bthome import BTHomeSource

            return BTHomeSource.from_record(name, record)
        options = {k: record[k] for k in ("connect_timeout_s", "scan_timeout_s",
                                          "battery_interval_s", "read_interval_s", "notify_mode")
                   if k in record}
        return cls(
            name,
            str(record["address"]),
            str(record["profile"]),
            device_name=str(record.get("device") or record.get("name") or ""),
            **options,
        )

    async def connect(self) -> None:
        """Find, connect, check the profile and subscribe; nothing stays open on failure."""
        await self.close()
        self._closing = False
        self._lost = None
        self._events.clear()
        self._wakeup.clear()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                client = await self._open()
        except TimeoutError as exc:
            raise DeviceNotFound(
                f"BLE device {self.address} ({self.name}) did not answer within "
                f"{self.connect_timeout_s:g} s",
                hint="is it switched on, in range, and not connected to a phone?",
            ) from exc
        self._client = client
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self._set_up(client)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, TimeoutError):
                raise TransientSourceError(
                    f"BLE device {self.address} ({self.name}) stalled while subscribing",
                    hint="reconnecting",
                ) from exc
            raise
        _LOGGER.info("%s: connected to %s (%s)", self.name, self.device_name or "device",
                     self.profile.name)

    async def stream(self) -> AsyncIterator[SampleBatch]:
        """Batches as notifications arrive; ``TransientSourceError`` when the link drops."""
        while True:
            if not self._events and self._lost is None:
                if self._client is None:
                    raise TransientSourceError(f"BLE source {self.name} is not connected")
                self._wakeup.clear()
                await self._wakeup.wait()
            events = list(self._events)
            self._events.clear()
            for batch in self._to_batches(events):
                if self._lost_at is not None and len(batch):
                    # data flows again after a link loss: that hole is the gap status shows
                    self._last_gap = (self._lost_at, batch.first_t)
                    self._lost_at = None
                self.counters.count(batch)
                yield batch
            if self._lost is not None and not self._events:
                raise TransientSourceError(
                    f"BLE link to {self.name} lost: {self._lost}", hint="reconnecting"
                )

    async def close(self) -> None:
        """Stop background reads and disconnect; safe to call at any time, twice."""
        self._closing = True
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        client, self._client = self._client, None
        if client is not None:
            from bleak.exc import BleakError

            try:
                async with asyncio.timeout(10):
                    await client.disconnect()
            except (BleakError, TimeoutError, OSError, EOFError) as exc:
                _LOGGER.debug("%s: disconnect failed: %s", self.name, exc)
        # The supervisor closes only after the stream ended, which flushed what had arrived.
        self._events.clear()
        self._wakeup.set()

    def describe(self) -> dict[str, Any]:
        """Profile, device name, battery and what was dropped, for ``status``."""
        out: dict[str, Any] = {
            "profile": self.profile.name,
            "device": self.device_name,
            "notify": self.notify_mode,
            "battery": self._battery,
            "notifications": self._notifications,
            "missing": list(self._missing),
            "dropped": dict(self._dropped),
            "bad_packets_by_characteristic": dict(self._bad_by_char),
        }
        if self._last_gap is not None:
            out["last_gap"] = {"from": self._last_gap[0], "to": self._last_gap[1]}
        elif self._lost_at is not None:
            out["last_gap"] = {"from": self._lost_at, "to": None}
        for key in ("location", "site"):
            if key in self._meta:
                out[key] = self._meta[key]
        return out

    # -- connection ----------------------------------------------------------------------

    async def _open(self) -> BleakClient:
        from bleak import BleakClient
        from bleak.exc import BleakError
        from bleak_retry_connector import establish_connection, get_device

        try:
            device = await get_device(self.address)
            if device is None:
                device = await _find_by_address(self.address, self.scan_timeout_s)
        except (BleakError, OSError, EOFError) as exc:
            raise _translate(exc, f"scanning for {self.address}") from exc
        if device is None:
            raise DeviceNotFound(
                f"BLE device {self.address} ({self.name}) is not advertising",
                hint="switch it on or wake it (straps wake when worn), and keep it in range",
            )
        if not self.device_name and device.name:
            self.device_name = device.name
            self._meta["device"] = device.name
        try:
            client: BleakClient = await establish_connection(
                BleakClient,
                device,
                self.name,
                disconnected_callback=self._on_disconnected,
                max_attempts=self.max_attempts,
            )
        except (BleakError, OSError, EOFError) as exc:
            raise _translate(exc, f"connecting to {self.address}") from exc
        return client

    async def _set_up(self, client: BleakClient) -> None:
        from bleak.exc import BleakError

        chars: dict[str, BleakGATTCharacteristic] = {}
        for service in client.services:
            for char in service.characteristics:
                chars.setdefault(char.uuid.lower(), char)
        wanted = (*self.profile.measurements, *self.profile.reads, gatt.BATTERY_LEVEL)
        self._missing = [gatt.CHARACTERISTIC_NAMES[u] for u in wanted if u not in chars]
        self.counters.extra["missing_characteristics"] = list(self._missing)
        if self._missing:
            _LOGGER.warning("%s: device lacks %s", self.name, ", ".join(self._missing))
        present = [u for u in self.profile.measurements if u in chars]
        if not present:
            raise PairingRefused(
                f"BLE device {self.address} ({self.name}) offers no "
                f"{' or '.join(gatt.CHARACTERISTIC_NAMES[u] for u in self.profile.measurements)}"
                f": it does not implement the {self.profile.name} profile",
                hint=f"pair it again with --profile auto: 'edgetwin pair remove {self.name}'",
            )
        use_start_notify = self.notify_mode == "start"
        try:
            for uuid in self.profile.reads:
                if uuid in chars and "read" in chars[uuid].properties:
                    self._read_site(uuid, bytes(await client.read_gatt_char(chars[uuid])))
            battery = chars.get(gatt.BATTERY_LEVEL)
            if battery is not None and "read" in battery.properties:
                self._push(gatt.BATTERY_LEVEL, await client.read_gatt_char(battery))
            polled: list[tuple[str, BleakGATTCharacteristic]] = []
            for uuid in present:
                props = chars[uuid].properties
                if "notify" not in props and "indicate" not in props and "read" in props:
                    # ESS characteristics may be read-only: read now, then every interval.
                    self._push(uuid, await client.read_gatt_char(chars[uuid]))
                    polled.append((uuid, chars[uuid]))
                    continue
                await client.start_notify(
                    chars[uuid], functools.partial(self._on_notify, uuid),
                    bluez={"use_start_notify": use_start_notify},
                )
            if polled:
                self.counters.extra["polled"] = [gatt.CHARACTERISTIC_NAMES[u] for u, _ in polled]
                self._spawn(self._poll_reads(client, polled), "reads")
            if battery is not None:
                if "notify" in battery.properties:
                    await client.start_notify(
                        battery, functools.partial(self._on_notify, gatt.BATTERY_LEVEL),
                        bluez={"use_start_notify": use_start_notify},
                    )
                elif "read" in battery.properties:
                    self._spawn(self._poll_battery(client, battery), "battery")
        except (BleakError, OSError, EOFError) as exc:
            raise _translate(exc, f"subscribing to {self.address}") from exc

    def _read_site(self, uuid: str, data: bytes) -> None:
        try:
            if uuid == gatt.BODY_SENSOR_LOCATION:
                self._meta["location"] = gatt.decode_body_sensor_location(data).name.lower()
            elif uuid == gatt.TEMPERATURE_TYPE:
                self._meta["site"] = gatt.decode_temperature_type(data).name.lower()
        except gatt.GattMalformed as exc:
            self._bad(uuid, exc)

    async def _poll_battery(self, client: BleakClient, char: BleakGATTCharacteristic) -> None:
        """Read the battery now and then, for devices that do not notify it."""
        from bleak.exc import BleakError

        while True:
            await asyncio.sleep(self.battery_interval_s)
            try:
                async with asyncio.timeout(10):
                    self._push(gatt.BATTERY_LEVEL, await client.read_gatt_char(char))
            except (BleakError, TimeoutError, OSError, EOFError) as exc:
                # the disconnect callback reports a dead link; a failed read alone is noise
                _LOGGER.debug("%s: battery read failed: %s", self.name, exc)

    async def _poll_reads(
        self, client: BleakClient, chars: list[tuple[str, BleakGATTCharacteristic]]
    ) -> None:
        """Read characteristics that cannot notify, every ``read_interval_s``."""
        from bleak.exc import BleakError

        while True:
            await asyncio.sleep(self.read_interval_s)
            for uuid, char in chars:
                try:
                    async with asyncio.timeout(10):
                        self._push(uuid, await client.read_gatt_char(char))
                except (BleakError, TimeoutError, OSError, EOFError) as exc:
                    # a dead link is reported by the disconnect callback
                    _LOGGER.debug("%s: read of %s failed: %s", self.name,
                                  gatt.CHARACTERISTIC_NAMES[uuid], exc)

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"ble {self.name} {what}")
        self._tasks.add(task)

    # -- callbacks (run on the event loop by bleak) ---------------------------------------

    def _on_notify(self, uuid: str, _char: object, data: bytearray) -> None:
        self._push(uuid, data)

    def _push(self, uuid: str, data: bytes | bytearray) -> None:
        if len(self._events) >= self._queue_size:
            # The consumer stalled: keep the newest, as the hub does, and count the loss.
            self._events.popleft()
            self.counters.drops += 1
            self._dropped["queue_full"] += 1
        self._events.append((self._clock(), uuid, bytes(data)))
        self._wakeup.set()

    def _on_disconnected(self, _client: object) -> None:
        # Before _client is set this is a failed attempt inside establish_connection, which
        # retries on its own; during close() it is our own disconnect. Neither is a lost link.
        if not self._closing and self._client is not None:
            self._lost = "the device disconnected or went out of range"
            self._lost_at = self._clock()
            self.counters.gaps += 1
            _LOGGER.info("%s: link lost", self.name)
        self._wakeup.set()

    # -- parsing -----------------------------------------------------------------------

    def _to_batches(self, events: list[tuple[float, str, bytes]]) -> list[SampleBatch]:
        rows: dict[str, tuple[list[float], list[list[float]]]] = {}

        def add(kind: str, t: float, values: list[float]) -> None:
            ts, vs = rows.setdefault(kind, ([], []))
            ts.append(t)
            vs.append(values)

        for t, uuid, data in events:
            self._notifications += 1
            try:
                if uuid == gatt.HEART_RATE_MEASUREMENT:
                    self._heart_rate(t, gatt.decode_heart_rate(data), add)
                elif uuid == gatt.PLX_CONTINUOUS:
                    m = gatt.decode_plx_continuous(data)
                    self._oximetry(t, m.spo2, m.pulse_rate, m.measurement_status, add)
                elif uuid == gatt.PLX_SPOT_CHECK:
                    s = gatt.decode_plx_spot_check(data)
                    self._oximetry(t, s.spo2, s.pulse_rate, s.measurement_status, add)
                elif uuid == gatt.TEMPERATURE_MEASUREMENT:
                    celsius = gatt.decode_temperature(data).celsius
                    if TEMP_MIN_C <= celsius <= TEMP_MAX_C:  # False for NaN too
                        add("temp", t, [celsius])
                    else:
                        self._drop("temp_implausible")
                elif uuid == gatt.BATTERY_LEVEL:
                    self._battery = gatt.decode_battery_level(data)
                    add("battery", t, [float(self._battery)])
                elif uuid in ESS_CHANNELS:
                    self._climate(t, uuid, data, add)
            except gatt.GattMalformed as exc:
                self._bad(uuid, exc)
        return [self._batch(kind, ts, vs) for kind, (ts, vs) in rows.items()]

    def _heart_rate(
        self, t: float, m: gatt.HeartRateMeasurement,
        add: Callable[[str, float, list[float]], None],
    ) -> None:
        if m.sensor_contact is False:
            # Without skin contact the strap reports noise (often 0 bpm): none of it is a beat.
            self._drop("no_contact", 1 + len(m.rr_raw))
            return
        if HR_MIN_BPM <= m.bpm <= HR_MAX_BPM:
            add("hr", t, [float(m.bpm)])
        else:
            self._drop("hr_implausible")
        # Each interval ends at a beat; the last beat is (about) when the notification left,
        # earlier ones are counted back from it. Out-of-range intervals still take their
        # place on the time axis, they are just not reported.
        rr_ms = m.rr_ms
        end = t
        stamped: list[tuple[float, float]] = []
        for rr in reversed(rr_ms):
            stamped.append((end, rr))
            end -= rr / 1000.0
        for beat_t, rr in reversed(stamped):
            if RR_MIN_MS <= rr <= RR_MAX_MS:
                add("rr", beat_t, [rr])
            else:
                self._drop("rr_out_of_range")

    def _oximetry(
        self, t: float, spo2_f: gatt.SFloat, pulse_f: gatt.SFloat, status: int | None,
        add: Callable[[str, float, list[float]], None],
    ) -> None:
        flagged = status is not None and bool(
            status & (gatt.PLX_STATUS_INVALID | gatt.PLX_STATUS_MEASUREMENT_UNAVAILABLE)
        )
        spo2, pulse = spo2_f.value, pulse_f.value
        if flagged or not 0.0 <= spo2 <= 100.0:  # NaN, NRes and +/-INF fail the range test
            spo2 = math.nan
        if flagged or not HR_MIN_BPM <= pulse <= HR_MAX_BPM:
            pulse = math.nan
        if math.isnan(spo2) and math.isnan(pulse):
            self._drop("spo2_invalid")
            return
        add("spo2", t, [spo2, pulse])

    def _climate(
        self, t: float, uuid: str, data: bytes, add: Callable[[str, float, list[float]], None],
    ) -> None:
        value: float | None
        if uuid == gatt.ESS_TEMPERATURE:
            value = gatt.decode_ess_temperature(data)
        elif uuid == gatt.ESS_HUMIDITY:
            value = gatt.decode_ess_humidity(data)
        else:
            value = gatt.decode_ess_pressure(data)
        if value is None:
            self._drop("ess_unknown_value")
            return
        row = [math.nan] * len(CLIMATE_CHANNELS)
        row[CLIMATE_CHANNELS.index(ESS_CHANNELS[uuid])] = value
        add("climate", t, row)

    def _batch(self, kind: str, ts: list[float], vs: list[list[float]]) -> SampleBatch:
        # Streams stay time-ordered across batches even when counted-back RR stamps or host
        # clock jitter would step back a little.
        last = self._last_t.get(kind, -math.inf)
        order = sorted(range(len(ts)), key=ts.__getitem__)
        t_sorted = [max(ts[i], last) for i in order]
        v_sorted = [vs[i] for i in order]
        self._last_t[kind] = t_sorted[-1]
        channels = {"spo2": ("spo2", "hr"), "climate": CLIMATE_CHANNELS}.get(kind, (kind,))
        return SampleBatch.build(f"{self.name}.{kind}", channels, t_sorted, v_sorted,
                                 meta=dict(self._meta))

    def _drop(self, why: str, n: int = 1) -> None:
        self.counters.drops += n
        self._dropped[why] += n

    def _bad(self, uuid: str, exc: gatt.GattMalformed) -> None:
        self.counters.bad_packets += 1
        self._bad_by_char[gatt.CHARACTERISTIC_NAMES.get(uuid, uuid)] += 1
        # First of a kind is news, repeats of a broken firmware are noise.
        log = _LOGGER.warning if uuid not in self._warned else _LOGGER.debug
        self._warned.add(uuid)
        log("%s: dropped a malformed notification: %s", self.name, exc)


async def scan_ble(timeout: float = 5.0) -> list[dict[str, Any]]:  # noqa: ASYNC109 - scan length
    """Advertising BLE devices: name, address, RSSI and the health profiles they announce."""
    from bleak import BleakScanner
    from bleak.exc import BleakError

    try:
        async with _scans().lock:
            found = await BleakScanner.discover(timeout=timeout, return_adv=True)
    except (BleakError, OSError, EOFError) as exc:
        raise _translate(exc, "scanning") from exc
    from edgetwin.sources.bthome import decode_for_scan

    rows: list[dict[str, Any]] = []
    for device, adv in found.values():
        uuids = [u.lower() for u in adv.service_uuids]
        row: dict[str, Any] = {
            "name": adv.local_name or device.name or "",
            "address": device.address,
            "rssi": adv.rssi,
            "profiles": [SERVICE_PROFILES[u] for u in uuids if u in SERVICE_PROFILES],
            "service_uuids": uuids,
        }
        bthome = decode_for_scan(dict(adv.service_data))
        if bthome is not None:
            # what it measures, from one decoded advert (encrypted ones need the bind key)
            row["profiles"].append("bthome")
            row.update(bthome)
        rows.append(row)
    rows.sort(key=lambda r: (not r["profiles"], -r["rssi"], r["address"]))
    return rows


async def probe_ble(address: str, within_s: float = 20.0) -> dict[str, Any]:
    """Connect once and report the device's name and the health profiles its GATT offers."""
    from bleak import BleakClient
    from bleak.exc import BleakError
    from bleak_retry_connector import establish_connection, get_device

    norm = normalize_address(address)
    if norm is None:
        raise DeviceNotFound(f"{address!r} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)")
    try:
        async with asyncio.timeout(within_s):
            device = await get_device(norm)
            if device is None:
                device = await _find_by_address(norm, within_s / 2)
            if device is None:
                raise DeviceNotFound(
                    f"BLE device {norm} is not advertising",
                    hint="switch it on or wake it, keep it close, and try again",
                )
            client = await establish_connection(BleakClient, device, norm, max_attempts=2)
            try:
                uuids = {s.uuid.lower() for s in client.services}
                name = device.name or ""
            finally:
                await client.disconnect()
    except TimeoutError as exc:
        raise DeviceNotFound(f"BLE device {norm} did not answer within {within_s:g} s") from exc
    except (BleakError, OSError, EOFError) as exc:
        raise _translate(exc, f"probing {norm}") from exc
    profiles = [p.name for p in PROFILES.values() if p.service in uuids]
    return {"address": norm, "name": name, "profiles": profiles, "services": sorted(uuids)}


# -- private helpers -----------------------------------------------------------------------

@dataclasses.dataclass
class _Scans:
    """One event loop's scanning: bluetoothd keeps one discovery session per D-Bus client
    and bleak shares one client per event loop, so concurrent scans from several sources
    would fail with InProgress (``lock``); and the addresses its sources wait to find, each
    with its waiters (``wanted``). One scan (``task``) runs while anyone waits and hands each
    device it sees to its waiters: straps reconnecting together after a restart share one
    scan, and none waits for the next one because another's device was seen first."""

    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    wanted: dict[str, list[asyncio.Future[Any]]] = dataclasses.field(default_factory=dict)
    nobody_waits: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def want(self, key: str) -> asyncio.Future[Any]:
        """A waiter for the device at ``key`` (an upper-case address); a scan runs for it."""
        found: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.wanted.setdefault(key, []).append(found)
        self._changed()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._scan_while_wanted())
        return found

    def give_up(self, key: str, found: asyncio.Future[Any]) -> None:
        """``found`` waits no more (served, timed out or cancelled)."""
        waiters = self.wanted.get(key, [])
        if found in waiters:
            waiters.remove(found)
        if not waiters:
            self.wanted.pop(key, None)
        self._changed()

    def seen(self, device: Any, _adv: Any) -> None:
        for waiter in self.wanted.pop(device.address.upper(), []):
            if not waiter.done():
                waiter.set_result(device)
        self._changed()

    def _changed(self) -> None:
        # after every change to ``wanted``: the scan stops once nobody waits
        if self.wanted:
            self.nobody_waits.clear()
        else:
            self.nobody_waits.set()

    async def _scan_while_wanted(self) -> None:
        from bleak import BleakScanner

        try:
            async with self.lock:
                # re-checked after the scanner stops: a source that began to wait while it
                # stopped is served by a new scan of this task, not left to time out
                while self.wanted:
                    async with BleakScanner(detection_callback=self.seen):
                        await self.nobody_waits.wait()
        except Exception as exc:  # noqa: BLE001 - every waiter gets the scan's failure
            for waiters in self.wanted.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)


_SCANS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Scans] = (
    weakref.WeakKeyDictionary()
)


def _scans() -> _Scans:
    loop = asyncio.get_running_loop()
    scans = _SCANS.get(loop)
    if scans is None:
        scans = _SCANS[loop] = _Scans()
    return scans


async def _find_by_address(address: str, scan_s: float) -> Any:
    """The advertising device at ``address`` (None if not seen within ``scan_s``), from the
    one scan that runs while any source waits (:class:`_Scans`)."""
    scans = _scans()
    key = address.upper()
    found = scans.want(key)
    try:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(found), scan_s)
        return None
    finally:
        scans.give_up(key, found)
        if found.done() and not found.cancelled():
            found.exception()  # retrieved: a failure that reached no one is not logged


def _translate(exc: BaseException, doing: str) -> SourceError:
    """A bleak/D-Bus failure as the error tree's retry class (decided by type, not text)."""
    from bleak.exc import (
        BleakBluetoothNotAvailableError,
        BleakDBusError,
        BleakDeviceNotFoundError,
        BleakGATTProtocolError,
        BleakGATTProtocolErrorCode,
    )
    from bleak_retry_connector import BleakNotFoundError

    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    auth_codes = {
        BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHENTICATION,
        BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION,
        BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHORIZATION,
        BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION_KEY_SIZE,
    }
    for err in chain:
        if (isinstance(err, BleakDBusError) and err.dbus_error in _PAIRING_ERRORS) or (
            isinstance(err, BleakGATTProtocolError) and err.code in auth_codes
        ):
            return PairingRefused(
                f"{doing}: the device refused us ({err})",
                hint="pair it with the system (bluetoothctl pair) or reset the device's bonds",
            )
    for err in chain:
        if isinstance(err, BleakBluetoothNotAvailableError):
            return TransientSourceError(
                f"{doing}: Bluetooth is not available ({err})",
                hint="power the adapter on (bluetoothctl power on) or plug in a dongle",
            )
        if isinstance(err, BleakDeviceNotFoundError | BleakNotFoundError):
            return DeviceNotFound(
                f"{doing}: the device is gone ({err})",
                hint="switch it on or bring it in range",
            )
        if isinstance(err, FileNotFoundError | ConnectionRefusedError):
            return TransientSourceError(
                f"{doing}: BlueZ is not reachable on the system D-Bus ({err})",
                hint="is bluetoothd running? (systemctl status bluetooth)",
            )
    return TransientSourceError(f"{doing}: {type(exc).__name__}: {exc}", hint="retrying")
