"""Room climate from BTHome adverts, read passively: no connection, one scanner for all.

BTHome thermometers (Shelly BLU, ESPHome, ATC firmware) put their readings in
the service data of every advertisement (UUID 0xFCD2, v2; 0x181C/0x181E, v1).
``AdvertScanner`` is one bleak ``BleakScanner`` per event loop (BlueZ keeps one
discovery session per D-Bus client) that dispatches adverts by address to the
paired ``BTHomeSource`` objects; each source decodes with Home Assistant's
``bthome-ble`` parser (encrypted adverts with the bind key from its pairing
record). Passive scanning needs BlueZ's advertisement monitor API; without it
the scanner scans actively and ``describe()["scan_mode"]`` says why.

Stream ``<name>.climate``: channels fixed by the first decoded advert, from
``temp`` (°C), ``humidity`` (%), ``pressure`` (hPa), ``co2`` (ppm), always
followed by ``battery`` (%, NaN when the advert lacks it) and ``rssi`` (dBm).

Dropped and counted in ``describe()["dropped"]``: repeats of the same advert
(BlueZ reports one per RSSI change), a packet id that is not newer than the
last one (duplicates and replays; after ``fresh_after_s`` a repeat counts as a
fresh reading of an unchanged room), an encryption counter that is not newer
than the last one (replayed encrypted adverts), and plaintext adverts from a
device paired with a bind key (downgrade). An advert the bind key cannot
decrypt ends the stream with ``PairingRefused`` naming the device: no value
from it is ever stored. The bind key is never logged, described or printed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import edgetwin.clock as twin_clock
from edgetwin.errors import DriverMissing, PairingRefused, SourceError, TransientSourceError
from edgetwin.sources.base import Source
from edgetwin.types import SampleBatch

_LOGGER = logging.getLogger(__name__)

BTHOME_V2_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
BTHOME_V1_UUIDS = ("0000181c-0000-1000-8000-00805f9b34fb", "0000181e-0000-1000-8000-00805f9b34fb")
BTHOME_UUIDS = (BTHOME_V2_UUID, *BTHOME_V1_UUIDS)

# bthome-ble's sensor keys -> our channels (and unit conversion factor)
MEASURED: dict[str, str] = {
    "temperature": "temp",
    "humidity": "humidity",
    "pressure": "pressure",  # mbar == hPa
    "carbon_dioxide": "co2",
}
CHANNEL_ORDER = ("temp", "humidity", "pressure", "co2")
BIND_KEY_HEX_LEN = 32


def parse_bind_key(text: str) -> bytes:
    """A bind key from 32 hex characters; ``ValueError`` says what is wrong, never echoing it."""
    cleaned = text.strip()
    if len(cleaned) != BIND_KEY_HEX_LEN:
        raise ValueError(
            f"a BTHome bind key is {BIND_KEY_HEX_LEN} hex characters (16 bytes); "
            f"this one has {len(cleaned)}"
        )
    bad = [i for i, c in enumerate(cleaned) if c not in "0123456789abcdefABCDEF"]
    if bad:
        raise ValueError(
            f"a BTHome bind key is hex (0-9, a-f); character {bad[0] + 1} is not"
        )
    return bytes.fromhex(cleaned)


@dataclass(frozen=True, slots=True)
class Advert:
    """One advertisement as BlueZ reported it: host time, RSSI and service data."""

    t: float
    address: str
    name: str
    rssi: int
    service_data: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class Reading:
    """What one advert carried: our channel values, battery, and its sequence number."""

    values: dict[str, float]
    battery: float | None
    encrypted: bool


class DecryptionFailed(Exception):
    """The bind key (or its absence) cannot open this device's adverts."""


class BTHomeDecoder:
    """Per-device state around ``bthome_ble.BTHomeBluetoothDeviceData``: filters, then decodes."""

    def __init__(
        self, address: str, bind_key: bytes | None, *, fresh_after_s: float = 60.0
    ) -> None:
        try:
            from bthome_ble import BTHomeBluetoothDeviceData
        except ImportError as exc:
            raise DriverMissing(
                f"BTHome decoding needs the bthome-ble package ({exc})",
                hint="pip install 'edgetwin[bthome]'",
            ) from exc

        self.address = address
        self._has_key = bind_key is not None
        self._data = BTHomeBluetoothDeviceData(bindkey=bind_key)
        self.fresh_after_s = fresh_after_s
        self._last_raw: bytes | None = None
        self._last_seq: int | None = None
        self._last_accept_t = -math.inf
        self._last_counter: int | None = None
        self.dropped: collections.Counter[str] = collections.Counter()

    def decode(self, adv: Advert) -> Reading | None:
        """The reading of a new advert; None if it was dropped (counted in ``dropped``).

        Raises ``DecryptionFailed`` when an encrypted advert cannot be opened.
        """
        uuid, raw = _bthome_payload(adv.service_data)
        if raw is None or not raw:
            self.dropped["not_bthome"] += 1
            return None
        if raw == self._last_raw and adv.t - self._last_accept_t < self.fresh_after_s:
            self.dropped["duplicate"] += 1
            return None
        v2 = uuid == BTHOME_V2_UUID
        encrypted = bool(raw[0] & 0x01) if v2 else uuid == BTHOME_V1_UUIDS[1]
        if self._has_key and not encrypted:
            self.dropped["plaintext_with_bind_key"] += 1
            return None
        if encrypted:
            if not self._has_key:
                raise DecryptionFailed("sends encrypted adverts but was paired without a bind key")
            if v2 and len(raw) >= 9:
                counter = int.from_bytes(raw[-8:-4], "little")
                if self._last_counter is not None and counter <= self._last_counter:
                    self.dropped["replayed_counter"] += 1
                    return None
        elif v2:
            seq = _plain_packet_id(raw)
            if seq is not None and self._is_old(seq, adv.t):
                self.dropped["replayed_packet_id"] += 1
                return None
        update = self._data.update(_service_info(adv, uuid, raw))
        if encrypted and not self._data.bindkey_verified:
            raise DecryptionFailed("sends adverts this bind key cannot decrypt")
        values: dict[str, float] = {}
        battery: float | None = None
        seq_seen: int | None = None
        for key, value in update.entity_values.items():
            native = value.native_value
            if not isinstance(native, int | float) or isinstance(native, bool):
                continue
            if key.key == "battery":
                battery = float(native)
            elif key.key == "packet_id":
                seq_seen = int(native)
            elif key.key in MEASURED:
                values[MEASURED[key.key]] = float(native)
        if not values and battery is None:
            self.dropped["no_measurement"] += 1
            return None
        self._last_raw = raw
        self._last_accept_t = adv.t
        if seq_seen is not None:
            self._last_seq = seq_seen
        if encrypted and v2 and len(raw) >= 9:
            self._last_counter = int.from_bytes(raw[-8:-4], "little")
        return Reading(values, battery, encrypted)

    def _is_old(self, seq: int, t: float) -> bool:
        """Packet id equal to or up to 63 behind the last (mod 256), within the fresh window."""
        if self._last_seq is None or t - self._last_accept_t >= self.fresh_after_s:
            return False
        behind = (self._last_seq - seq) % 256
        return behind < 64


class AdvertScanner:
    """One BleakScanner shared by every BTHome source of an event loop, dispatching by address."""

    def __init__(self) -> None:
        self._subscribers: dict[str, Callable[[Advert], None]] = {}
        self._scanner: Any = None
        self.mode: str | None = None  # "passive" or "active"
        self.mode_note = ""
        self.adverts = 0
        self.unmatched = 0
        self._lock = asyncio.Lock()

    async def subscribe(self, address: str, callback: Callable[[Advert], None]) -> None:
        """Receive this address's BTHome adverts; starts scanning for the first subscriber."""
        async with self._lock:
            if address in self._subscribers:
                raise SourceError(f"BLE device {address} is already paired to another source")
            self._subscribers[address] = callback
            if self._scanner is None:
                try:
                    await self._start()
                except BaseException:
                    del self._subscribers[address]
                    raise

    async def unsubscribe(self, address: str) -> None:
        """Stop receiving; the last one out stops the scanner."""
        async with self._lock:
            self._subscribers.pop(address, None)
            if not self._subscribers and self._scanner is not None:
                scanner, self._scanner = self._scanner, None
                from bleak.exc import BleakError

                try:
                    await scanner.stop()
                except (BleakError, OSError, EOFError) as exc:
                    _LOGGER.debug("stopping the BTHome scanner failed: %s", exc)

    async def _start(self) -> None:
        from bleak import BleakScanner
        from bleak.exc import BleakError

        from edgetwin.sources.ble import _translate

        try:
            from bleak.args.bluez import OrPattern, OrPatternLike
            from bleak.assigned_numbers import AdvertisementDataType

            # service data of UUID16 0xFCD2 (v2), 0x181C and 0x181E (v1), little-endian
            patterns: list[OrPatternLike] = [
                OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, uuid16)
                for uuid16 in (b"\xd2\xfc", b"\x1c\x18", b"\x1e\x18")
            ]
            scanner = BleakScanner(self._on_advert, scanning_mode="passive",
                                   bluez={"or_patterns": patterns})
            await scanner.start()
            self._scanner, self.mode, self.mode_note = scanner, "passive", ""
            return
        except (BleakError, OSError, EOFError, ImportError, ValueError) as exc:
            note = f"passive scanning unavailable ({type(exc).__name__}: {exc}); scanning actively"
        _LOGGER.info("BTHome: %s", note)
        try:
            scanner = BleakScanner(self._on_advert, service_uuids=None)
            await scanner.start()
        except (BleakError, OSError, EOFError) as exc:
            raise _translate(exc, "starting the BTHome scanner") from exc
        self._scanner, self.mode, self.mode_note = scanner, "active", note

    def _on_advert(self, device: Any, adv: Any) -> None:
        self.adverts += 1
        callback = self._subscribers.get(device.address.upper())
        if callback is None:
            self.unmatched += 1
            return
        data = {u.lower(): bytes(v) for u, v in adv.service_data.items()
                if u.lower() in BTHOME_UUIDS}
        if not data:
            self.unmatched += 1
            return
        callback(Advert(twin_clock.now(), device.address.upper(),
                        adv.local_name or device.name or "", int(adv.rssi), data))


_SCANNERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AdvertScanner] = (
    weakref.WeakKeyDictionary()
)


def shared_scanner() -> AdvertScanner:
    """This event loop's scanner (created on first use)."""
    loop = asyncio.get_running_loop()
    scanner = _SCANNERS.get(loop)
    if scanner is None:
        scanner = _SCANNERS[loop] = AdvertScanner()
    return scanner


class BTHomeSource(Source):
    """One paired BTHome device, fed by the shared scanner."""

    kind = "bthome"
    # battery sensors advertise every few seconds to a minute; unchanged rooms are quiet
    silence_tolerance_s = 600.0

    def __init__(self, name: str, address: str, *, bind_key: bytes | None = None,
                 device_name: str = "", fresh_after_s: float = 60.0,
                 queue_size: int = 4096) -> None:
        super().__init__(name)
        from edgetwin.sources.ble import normalize_address

        norm = normalize_address(address)
        if norm is None:
            raise ValueError(f"{address!r} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)")
        if bind_key is not None and len(bind_key) != 16:
            raise ValueError("a BTHome bind key is 16 bytes")
        self.address = norm
        self.device_name = device_name
        self._bind_key = bind_key
        self._fresh_after_s = fresh_after_s
        self._decoder = BTHomeDecoder(norm, bind_key, fresh_after_s=fresh_after_s)
        self._queue: collections.deque[Advert] = collections.deque()
        self._queue_size = queue_size
        self._wakeup = asyncio.Event()
        self._scanner: AdvertScanner | None = None
        self._channels: tuple[str, ...] | None = None
        self._last_t = -math.inf
        self._battery: float | None = None
        self._rssi: int | None = None
        self._error: str | None = None
        self._queue_drops = 0
        self._scan_mode: str | None = None
        self._scan_note = ""

    @classmethod
    def from_record(cls, name: str, record: dict[str, Any]) -> BTHomeSource:
        """Build from ``{"kind": "bthome", "address", "bind_key"?: hex, "device"?}``."""
        key_hex = record.get("bind_key")
        key = parse_bind_key(str(key_hex)) if key_hex else None
        return cls(name, str(record["address"]), bind_key=key,
                   device_name=str(record.get("device") or ""),
                   fresh_after_s=float(record.get("fresh_after_s", 60.0)))

    def __repr__(self) -> str:  # never the key
        sealed = self._bind_key is not None
        return f"BTHomeSource({self.name!r}, {self.address}, encrypted={sealed})"

    async def connect(self) -> None:
        """Join the shared scanner; nothing stays subscribed on failure."""
        await self.close()
        self._queue.clear()
        self._wakeup.clear()
        scanner = shared_scanner()
        await scanner.subscribe(self.address, self._on_advert)
        self._scanner = scanner
        self._scan_mode, self._scan_note = scanner.mode, scanner.mode_note
        _LOGGER.info("%s: listening for BTHome adverts (%s scan)", self.name, scanner.mode)

    async def stream(self) -> AsyncIterator[SampleBatch]:
        """Batches of decoded adverts; ``PairingRefused`` if the bind key does not fit."""
        while True:
            if not self._queue:
                if self._scanner is None:
                    raise TransientSourceError(f"BTHome source {self.name} is not listening")
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            adverts = list(self._queue)
            self._queue.clear()
            ts: list[float] = []
            rows: list[list[float]] = []
            for adv in adverts:
                self._rssi = adv.rssi
                if adv.name and not self.device_name:
                    self.device_name = adv.name
                try:
                    reading = self._decoder.decode(adv)
                except DecryptionFailed as exc:
                    self._error = (f"BTHome device {self.address} ({self.name}) {exc}: "
                                   "no values from it are stored")
                    self.counters.bad_packets += 1
                    raise PairingRefused(
                        self._error,
                        hint=("read the bind key from the device's app or firmware and pair "
                              f"again: 'edgetwin pair remove {self.name}' then "
                              f"'edgetwin pair add ble {self.address} --profile bthome "
                              "--bind-key HEX'"),
                    ) from None
                if reading is None:
                    continue
                self._error = None
                if reading.battery is not None:
                    self._battery = reading.battery
                if self._channels is None:
                    self._channels = (*[c for c in CHANNEL_ORDER if c in reading.values],
                                      "battery", "rssi")
                ts.append(max(adv.t, self._last_t))
                self._last_t = ts[-1]
                row = [reading.values.get(c, math.nan) for c in self._channels[:-2]]
                row.append(reading.battery if reading.battery is not None else math.nan)
                row.append(float(adv.rssi))
                rows.append(row)
            self.counters.drops = self._queue_drops + sum(self._decoder.dropped.values())
            if rows and self._channels is not None:
                batch = SampleBatch.build(f"{self.name}.climate", self._channels, ts, rows,
                                          meta={"profile": "bthome"})
                self.counters.count(batch)
                yield batch

    async def close(self) -> None:
        """Leave the shared scanner (the last source out stops it); safe twice."""
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            await scanner.unsubscribe(self.address)
        self._wakeup.set()

    def describe(self) -> dict[str, Any]:
        """Scan mode, battery, RSSI, what was dropped and any key error (never the key)."""
        return {
            "profile": "bthome",
            "device": self.device_name,
            "encrypted": self._bind_key is not None,
            "scan_mode": self._scan_mode,
            "scan_note": self._scan_note,
            "channels": list(self._channels or ()),
            "battery": self._battery,
            "rssi": self._rssi,
            "dropped": dict(self._decoder.dropped) | (
                {"queue_full": self._queue_drops} if self._queue_drops else {}),
            "error": self._error,
        }

    def _on_advert(self, adv: Advert) -> None:
        if len(self._queue) >= self._queue_size:
            self._queue.popleft()
            self._queue_drops += 1
        self._queue.append(adv)
        self._wakeup.set()


def decode_for_scan(service_data: dict[str, bytes]) -> dict[str, Any] | None:
    """What a BTHome advert says about its device, for ``pair scan``; None if not BTHome."""
    uuid, raw = _bthome_payload({u.lower(): bytes(v) for u, v in service_data.items()})
    if raw is None or not raw:
        return None
    encrypted = bool(raw[0] & 0x01) if uuid == BTHOME_V2_UUID else uuid == BTHOME_V1_UUIDS[1]
    if encrypted:
        return {"bthome": 2 if uuid == BTHOME_V2_UUID else 1, "encrypted": True, "measures": []}
    try:
        decoder = BTHomeDecoder("00:00:00:00:00:00", None)
    except DriverMissing:  # a build without the bthome extra: say what it is, not what it reads
        return {"bthome": 2 if uuid == BTHOME_V2_UUID else 1, "encrypted": False,
                "measures": [], "note": "pip install 'edgetwin[bthome]' to read it"}
    try:
        reading = decoder.decode(Advert(twin_clock.now(), "00:00:00:00:00:00", "", 0,
                                        {uuid: raw} if uuid else {}))
    except DecryptionFailed:
        reading = None
    measures = [c for c in CHANNEL_ORDER if reading and c in reading.values]
    if reading is not None and reading.battery is not None:
        measures.append("battery")
    return {"bthome": 2 if uuid == BTHOME_V2_UUID else 1, "encrypted": False,
            "measures": measures}


# -- private helpers ---------------------------------------------------------------------


def _bthome_payload(service_data: dict[str, bytes]) -> tuple[str | None, bytes | None]:
    for uuid in BTHOME_UUIDS:
        raw = service_data.get(uuid)
        if raw is not None:
            return uuid, raw
    return None, None


def _plain_packet_id(raw: bytes) -> int | None:
    """The packet id of a plain v2 advert: object 0x00 always comes first when present."""
    start = 7 if raw[0] & 0x02 else 1  # MAC included?
    if len(raw) >= start + 2 and raw[start] == 0x00:
        return raw[start + 1]
    return None


def _service_info(adv: Advert, uuid: str | None, raw: bytes) -> Any:
    from habluetooth import BluetoothServiceInfoBleak

    return BluetoothServiceInfoBleak(
        name=adv.name or adv.address, address=adv.address, rssi=adv.rssi,
        manufacturer_data={}, service_data={uuid or BTHOME_V2_UUID: raw},
        service_uuids=[uuid or BTHOME_V2_UUID], source="local", device=None,  # type: ignore[arg-type]
        advertisement=None, connectable=False, time=adv.t, tx_power=None,
    )
